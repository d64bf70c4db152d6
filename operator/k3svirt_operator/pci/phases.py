"""``PCIPassthrough.status.phase`` values (also its printableStatus)."""

PHASE_PENDING = "Pending"
PHASE_AVAILABLE = "Available"
PHASE_BOUND = "Bound"
PHASE_ASSIGNED = "Assigned"
PHASE_FAILED = "Failed"
