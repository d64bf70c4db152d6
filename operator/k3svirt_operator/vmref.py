"""Which k3svirt VirtualMachine a libvirt domain is (or is built for): one type for the domain
builder, which writes it into the domain's metadata, and the stats sampler, which reads it back."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VMRef:
    """Which k3svirt VirtualMachine a libvirt domain belongs to."""

    namespace: str
    name: str
    uid: str | None = None  # unknown for a domain whose metadata does not carry it
    generation: int | None = None
