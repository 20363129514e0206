"""A submodule that happens to be called `time` (see gasample.sub.relative_time)."""

VALUE = "gasample.sub.time"
