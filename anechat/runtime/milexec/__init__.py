"""anechat's portable executor of Core ML (MIL) programs: the same .mlpackage files Core ML runs,
executed with numpy anywhere. Programs are read into a small IR, then compiled once into a flat plan."""

from anechat.runtime.milexec.backend import PortableBackend, PortablePart, describe_part

__all__ = ["PortableBackend", "PortablePart", "describe_part"]
