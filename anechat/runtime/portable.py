"""The portable backend's public name (implementation in anechat.runtime.milexec)."""

from anechat.runtime.milexec import PortableBackend, PortablePart, describe_part

__all__ = ["PortableBackend", "PortablePart", "describe_part"]
