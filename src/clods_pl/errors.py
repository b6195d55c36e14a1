"""Project-wide exception types: every user-facing failure is one line that says what to do."""


class ClodsError(RuntimeError):
    """Base class of errors a user can fix (bad input, missing dependency, stale run)."""


class DatasetError(ClodsError):
    """A dataset on disk is missing a file or holds invalid content; the message names the file."""


class BackendUnavailableError(ClodsError):
    """A configured backend (rasterizer, message passing, renderer) is not installed or not usable here."""


class ManifestError(ClodsError):
    """A run directory's manifest is missing, corrupt, or a stage's inputs are stale."""


class Interrupted(ClodsError):
    """The run stopped at a safe point on SIGTERM (``kill``, ``scancel``, a SLURM pre-emption); finished work is
    saved and rerunning the same command resumes it."""
