"""Shared test setup: few threads (tests run side by side on small machines) and fixed seeds."""
import random

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same random state, so failures reproduce."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return 0
