"""Errors a user can act on. The CLI prints them without a traceback and exits 2."""


class SignFlowError(Exception):
    """Base class: a problem with the user's input or environment, with a message saying how to fix it."""

    exit_code = 2


class ZooError(SignFlowError):
    """A zoo file is malformed or names an unknown entry."""


class DataError(SignFlowError):
    """A data set path or file is missing or malformed."""


class CheckpointError(SignFlowError):
    """A checkpoint file is corrupt, truncated or does not match the requested model."""


class ModelFileError(SignFlowError):
    """An ONNX or PyTorch model file cannot be loaded."""


class BackendError(SignFlowError):
    """An unknown backend, a broken plugin, or a backend that cannot run here."""


class InputError(SignFlowError, ValueError):
    """A tensor handed to a runner or the model has the wrong shape, dtype or values."""


class PayloadError(SignFlowError, ValueError):
    """A streaming frame payload is malformed; ``field`` names the offending key."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"frame payload field {field!r}: {message}")


class TrackingError(SignFlowError):
    """The MLflow tracking store cannot be reached or refused a request."""


class TrainingConfigError(SignFlowError, ValueError):
    """A training setting is outside its documented range (see ``TrainingConfig.validate``)."""


class TrainingDivergedError(SignFlowError):
    """The training loss became NaN or infinite; nothing was saved. Names the epoch, step and likely cause."""

    def __init__(self, message: str, epoch: int | None = None, step: int | None = None):
        self.epoch = epoch
        self.step = step
        super().__init__(message)


class ClusterError(SignFlowError):
    """``bench --cluster``: Ray is missing, the cluster cannot be reached, or a host name or address is wrong."""


class ReportError(SignFlowError, ValueError):
    """A report was asked for that the records cannot answer, or a report option is malformed."""


class LockTimeout(SignFlowError):
    """Another process held a lock longer than allowed, or holds it while stopped (Ctrl-Z).

    ``lock`` is the lock file, ``holder`` what its holder wrote into it (pid, host, command, since; empty
    when unknown) and ``stopped`` whether that holder is a stopped process on this host.
    """

    def __init__(self, message: str, lock: str = "", holder: dict | None = None, stopped: bool = False):
        self.lock = lock
        self.holder = dict(holder or {})
        self.stopped = stopped
        super().__init__(message)
