"""The code's versions, in one place every module may import (it imports nothing): the package version and the
version of what a trial measures."""

__version__ = "0.2.0"
# What a trial measures, in every trial key: bumped when that changes, so no old record is reused (docs/protocol.md).
PROTOCOL_VERSION = 2
