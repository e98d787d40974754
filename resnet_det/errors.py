"""The project's own error types.

Every problem a user can fix (a wrong path, a malformed annotation, a weights file for another
model) is raised as a ``ResnetDetError`` with a one-line message that names the file, the record
or field, and the fix. The command-line tools print that line and exit with status 2 instead of a
traceback (see ``resnet_det.cli``).
"""

from backbones.errors import BackboneError


class ResnetDetError(Exception):
    """Base class: an error the user can fix, with a one-line message saying how."""


class ConfigError(ResnetDetError):
    """A config file, key or value that does not exist or does not fit."""


class DatasetError(ResnetDetError):
    """A dataset root, annotation file, image or record that cannot be used."""


class CheckpointError(ResnetDetError):
    """A checkpoint or weights file that is missing, corrupt or made for another model."""


class TrainingError(ResnetDetError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class EvaluationError(ResnetDetError):
    """Results or ground truth that cannot be evaluated together."""


class MissingDependencyError(ResnetDetError, ImportError):
    """An optional library (detectron2) that a feature needs is not installed; says how to install it."""


class ExportError(ResnetDetError):
    """A model cannot be exported as asked, or an exported model file cannot be run."""


# Errors that the tools turn into a one-line message. BackboneError lives in ``backbones`` so
# that the backbone package stays usable on its own.
USER_ERRORS = (ResnetDetError, BackboneError)
