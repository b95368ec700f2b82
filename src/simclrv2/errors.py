"""The one exception type users see: the CLI prints its message as one line and exits non-zero."""

from __future__ import annotations


class SimCLRv2Error(Exception):
    """Bad input or configuration: the message says what was wrong and what to do."""


class Interrupted(SimCLRv2Error):
    """A run stopped by a signal (Ctrl-C, SIGTERM, SLURM's SIGUSR1); its state was saved so ``--resume``
    continues it. The exit code follows the shell's convention, 128 + the signal number."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UnknownClassError(SimCLRv2Error):
    """The test split has a class the training images lack: no prediction could be right, so the split is
    refused (in memory and streamed alike), never treated as a missing split to step around."""

    @classmethod
    def of_folder(cls, class_folder: object, train_folder: object | None = None) -> UnknownClassError:
        """The one message for it: the test class folder, and the train folder when the classes came from one."""
        lacking = f"{train_folder} does" if train_folder is not None else "the training images do"
        return cls(f"{class_folder} is a class that {lacking} not have; train and test must use the same class "
                   "folders")
