"""Pure power-state decisions: runStrategy + pending action request + observed domain -> one step.

Rules (after KubeVirt's runStrategy):
- Always: keep it running; a guest or `virsh` that stops it gets it started again.
- Halted: keep it stopped.
- Manual: never start or stop on its own; only action requests do.
- RerunOnFailure: start it; restart it after a crash or an outside destroy, but not after the guest
  powered itself off cleanly.
Action requests (annotation k3svirt.io/action-request) run once: restart works under every strategy
but Halted; start and stop only where they do not fight the strategy, otherwise a warning says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from k3svirt_common.names import RunStrategy


class Power(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    STOPPING = "stopping"  # an ACPI shutdown was sent and the guest is still up
    CRASHED = "crashed"
    ABSENT = "absent"  # no domain defined yet


class ShutoffReason(StrEnum):
    NONE = "none"
    SHUTDOWN = "shutdown"  # the guest powered off
    DESTROYED = "destroyed"
    CRASHED = "crashed"
    FAILED = "failed"
    OTHER = "other"


class Step(StrEnum):
    NOTHING = "nothing"
    START = "start"
    STOP = "stop"  # graceful: ACPI shutdown, destroy after the grace period
    RESTART = "restart"  # stop, then start with the current definition


@dataclass(frozen=True)
class Decision:
    step: Step
    reason: str
    consume_action: bool = False  # the pending action request is done (or refused) with this step
    warning: str | None = None


def _running(power: Power) -> bool:
    return power in (Power.RUNNING, Power.PAUSED, Power.STOPPING)


def decide(run_strategy: str, power: Power, shutoff_reason: ShutoffReason, action: str | None) -> Decision:
    if action is not None:
        return _decide_action(run_strategy, power, action)
    return _decide_strategy(run_strategy, power, shutoff_reason)


def _decide_strategy(run_strategy: str, power: Power, reason: ShutoffReason) -> Decision:
    running = _running(power)
    if run_strategy == RunStrategy.ALWAYS:
        return (
            Decision(Step.NOTHING, "running as runStrategy Always wants")
            if running
            else Decision(Step.START, "runStrategy Always: the VM must run")
        )
    if run_strategy == RunStrategy.HALTED:
        if power == Power.STOPPING:
            return Decision(Step.STOP, "runStrategy Halted: still shutting down")
        return (
            Decision(Step.STOP, "runStrategy Halted: the VM must not run")
            if running
            else Decision(Step.NOTHING, "stopped as runStrategy Halted wants")
        )
    if run_strategy == RunStrategy.RERUN_ON_FAILURE:
        if running:
            return Decision(Step.NOTHING, "running")
        if power == Power.SHUTOFF and reason == ShutoffReason.SHUTDOWN:
            return Decision(Step.NOTHING, "the guest powered off cleanly; RerunOnFailure leaves it off")
        return Decision(Step.START, "runStrategy RerunOnFailure: not stopped cleanly, starting")
    # Manual: only action requests change the power state.
    if power == Power.STOPPING:
        return Decision(Step.STOP, "finishing a requested stop")
    return Decision(Step.NOTHING, "runStrategy Manual: waiting for an action request")


def _decide_action(run_strategy: str, power: Power, action: str) -> Decision:
    running = _running(power)
    if action == "restart":
        if run_strategy == RunStrategy.HALTED:
            return Decision(
                Step.NOTHING,
                "restart refused",
                True,
                "restart ignored: runStrategy is Halted (set it to Always to run the VM)",
            )
        return Decision(Step.RESTART if running else Step.START, "restart requested", True)
    if action == "start":
        if run_strategy == RunStrategy.HALTED:
            return Decision(
                Step.NOTHING, "start refused", True, "start ignored: runStrategy is Halted (set it to Always or Manual)"
            )
        return Decision(Step.NOTHING if running else Step.START, "start requested", True)
    if action == "stop":
        if run_strategy in (RunStrategy.ALWAYS, RunStrategy.RERUN_ON_FAILURE):
            return Decision(
                Step.NOTHING,
                "stop refused",
                True,
                f"stop ignored: runStrategy {run_strategy} would start the VM again "
                "(set runStrategy to Halted to stop it)",
            )
        return Decision(Step.STOP if running else Step.NOTHING, "stop requested", True)
    return Decision(Step.NOTHING, "unknown action", True, f"unknown action {action!r} ignored")
