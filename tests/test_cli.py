"""utils.cli.run: how a command ends on a user mistake, a file-system error or Ctrl-C."""
import pytest
from torch.utils.data import DataLoader, Dataset

from utils.cli import UserError, run


def ended(capsys, main):
    with pytest.raises(SystemExit) as exit_info:
        run(main, [])
    return exit_info.value.code, capsys.readouterr().err


class BadItem(Dataset):
    def __init__(self, error=UserError):
        self.error = error

    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise self.error("truncated image: a.png")


class FileError(UserError):
    """A kind of user error, as utils.torch_files.TorchFileError."""


@pytest.mark.parametrize("error", [UserError, FileError])
def test_user_error_is_one_line_exit_2_also_from_a_loader_process(capsys, error):
    assert ended(capsys, lambda argv: (_ for _ in ()).throw(error("bad --flag"))) == (2, "error: bad --flag\n")

    def load(argv):
        for _ in DataLoader(BadItem(error), num_workers=1):
            pass

    assert ended(capsys, load) == (2, "error: truncated image: a.png\n")


def test_file_system_error_on_a_path_is_one_line_exit_1(capsys, tmp_path):
    missing = tmp_path / "no" / "such" / "file.txt"
    code, err = ended(capsys, lambda argv: open(missing, "w"))
    assert code == 1 and err == f"error: No such file or directory: {missing}\n"
    with pytest.raises(OSError):  # one without a path is a fault of the program: its traceback stays
        run(lambda argv: (_ for _ in ()).throw(OSError("device lost")), [])


def test_ctrl_c_exits_130_with_what_to_do(capsys):
    code, err = ended(capsys, lambda argv: (_ for _ in ()).throw(KeyboardInterrupt("add --resume last")))
    assert code == 130 and err == "interrupted: add --resume last\n"
    code, err = ended(capsys, lambda argv: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert code == 130 and "rerun the same command" in err


def test_a_file_name_with_undecodable_bytes_is_printed_escaped(capsys):
    name = b"img\xff.png".decode("utf-8", "surrogateescape")  # as os.listdir gives such a name
    code, err = ended(capsys, lambda argv: (_ for _ in ()).throw(UserError(f"cannot read image: {name}")))
    assert code == 2 and err == "error: cannot read image: img\\udcff.png\n"
