"""User-facing errors: one line that names the bad value and what would be valid."""


class GraphpartError(ValueError):
    """Base class for errors caused by user input; the CLI prints them without a traceback."""


class GraphError(GraphpartError):
    """The graph is malformed (cycle, dangling input, shape mismatch, unknown op)."""


class ConfigError(GraphpartError):
    """A configuration value or key is invalid."""


class DataError(GraphpartError):
    """A dataset is malformed (shape, dtype, NaN, labels out of range)."""


class PlanError(GraphpartError):
    """A partition or schedule cannot be made as asked."""


class RunError(GraphpartError):
    """A run directory cannot be used as asked (missing, not a run, no params.npz yet)."""


class Diverged(GraphpartError):
    """Training diverged (a non-finite or exploding loss); the message names the step."""


class StageFailure(RuntimeError):
    """A worker failed while running the pipeline; the message names the stage and micro-batch."""


class Terminated(KeyboardInterrupt):
    """The program was sent SIGTERM: handled like Ctrl-C (state interrupted, checkpoint kept)."""
