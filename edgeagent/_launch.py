"""``edgeagent launch``: what the systemd unit runs. It starts the agent of the
current release and owns switching back.

- No trial pending: ``os.execve`` of ``R/current/bin/edgeagent run --data-dir D
  ...`` (direct mode): nothing of the launcher stays resident.
- A trial pending (``Slots.switch`` wrote it): the launcher stays as the agent's
  parent (supervisor mode). It counts each start in launch.json before it
  starts the agent, with ``EDGEFLOCK_TRIAL=<version>``; the agent stopping is a
  failed start, and ``--max-starts`` of them roll back; so does the health
  timeout running out (from this run's start) before the agent marks the trial
  healthy. Marked healthy: the agent is stopped (SIGTERM), the trial cleared,
  the agent started again in direct mode. SIGTERM/SIGINT are passed on to the
  agent, and the launcher exits with it.
- Roll back: the version marked broken with the reason, a rollback record for
  the agent to report, ``current`` := the previous version, the SQLite backup
  restored if the store's schema version changed, then direct mode.
- A trial whose version is not current (a power cut between writing it and the
  switch) is discarded.

Only the standard library and ``edgeagent._slots`` are imported.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any, NoReturn

from ._slots import (
    ENV_LAUNCHER,
    ENV_RELEASES,
    ENV_TRIAL,
    RELAUNCH_EXIT,
    SlotError,
    Slots,
    Trial,
)

__all__ = ["main"]

DEFAULT_RELEASES = "/opt/edgeflock"
DEFAULT_DATA_DIR = "/var/lib/edgeflock/agent"
_TICK = 0.25  # seconds between looks at launch.json while the agent is on trial
_TAIL = 4096  # bytes of the agent's stderr kept for a roll back's reason


def log(message: str) -> None:
    print(f"edgeagent launch: {message}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeagent launch",
        usage="edgeagent launch [options] [-- edgeagent run arguments]",
        description="start the current release's agent; on trial, supervise it and roll back",
    )
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--releases", default=DEFAULT_RELEASES, help="releases root (R)")
    p.add_argument("--max-starts", type=int, default=3, help="failed starts before roll back")
    p.add_argument(
        "--stop-timeout", type=float, default=30.0, help="seconds from SIGTERM to SIGKILL"
    )
    p.add_argument(
        "--restart-delay", type=float, default=1.0, help="first pause after a failed start"
    )
    p.add_argument("--status", action="store_true", help="show the slots and trial, then exit")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return p


def main(argv: list[str]) -> int:
    own, extra = argv, []
    if "--" in argv:
        cut = argv.index("--")
        own, extra = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(own)
    if args.max_starts < 1:
        print("error: --max-starts must be at least 1", file=sys.stderr)
        return 2
    slots = Slots(Path(args.releases), Path(args.data_dir))
    if args.status:
        return _status(slots, args.output)
    return Launcher(slots, args, extra).run()


def _status(slots: Slots, output: str) -> int:
    st = slots.describe()
    if output == "json":
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    print(f"releases:   {st['releases']}")
    print(f"installed:  {', '.join(st['installed']) or 'none'}")
    for name in ("current", "previous", "launcher"):
        print(f"{name + ':':<11} {st[name]}")
    trial = st["trial"]
    if trial:
        state = "healthy" if trial.get("healthy") else "pending"
        if trial.get("rolling_back"):
            state = "rolling back"
        print(
            f"trial:      {trial.get('version')} ({state}, {trial.get('starts')} starts, "
            f"job {trial.get('job')})"
        )
    rb = st["rollback"]
    if rb:
        print(f"rolled back: {rb.get('version')} at {rb.get('time')}: {rb.get('reason')}")
    for version, entry in sorted(st["broken"].items()):
        print(f"broken:     {version}: {entry.get('reason')}")
    return 0


class Launcher:
    def __init__(self, slots: Slots, args: argparse.Namespace, extra: list[str]) -> None:
        self.slots = slots
        self.args = args
        self.extra = extra
        self.signal: int | None = None
        self.child: Any = None  # subprocess.Popen while the agent runs on trial

    # -- what to do ------------------------------------------------------------------

    def run(self) -> int:
        trial = self.slots.trial()
        if trial is None:
            return self.direct()
        if trial.rolling_back is not None:
            log(f"finishing the roll back of {trial.version}: {trial.rolling_back}")
            return self.rollback(trial, trial.rolling_back)
        current = self.slots.current_version()
        if trial.version != current:
            log(f"discarding the trial of {trial.version}: the current version is {current}")
            return self.end_trial_and_direct()
        if trial.healthy:
            return self.end_trial_and_direct()
        return self.supervise(trial)

    def launcher_argv(self) -> list[str]:
        """How to run this launcher again (EDGEFLOCK_LAUNCHER)."""
        a = self.args
        own = [
            "launch", "--data-dir", str(self.slots.data_dir), "--releases", str(self.slots.root),
            "--max-starts", str(a.max_starts), "--stop-timeout", str(a.stop_timeout),
            "--restart-delay", str(a.restart_delay), "--", *self.extra,
        ]  # fmt: skip
        exe = sys.argv[0] if sys.argv else ""
        if os.path.isabs(exe) and not exe.endswith(".py") and os.access(exe, os.X_OK):
            return [exe, *own]
        return [sys.executable, "-m", "edgeagent._cli", *own]

    def env(self, trial: str | None) -> dict[str, str]:
        env = dict(os.environ)
        env[ENV_RELEASES] = str(self.slots.root)
        env[ENV_LAUNCHER] = json.dumps(self.launcher_argv())
        env.pop(ENV_TRIAL, None)
        if trial is not None:
            env[ENV_TRIAL] = trial
        return env

    def agent_argv(self) -> list[str]:
        agent = self.slots.agent()
        if not os.access(agent, os.X_OK):
            fallback = self.slots.link("launcher")
            if fallback is not None and os.access(self.slots.agent(fallback), os.X_OK):
                log(f"no agent at {agent}: running the launcher's release {fallback}")
                agent = self.slots.agent(fallback)
        return [str(agent), "run", "--data-dir", str(self.slots.data_dir), *self.extra]

    def end_trial_and_direct(self) -> int:
        try:
            self.slots.end_trial()
        except SlotError as exc:  # a full card: the same decision is made next time
            log(str(exc))
        return self.direct()

    def direct(self) -> int:
        argv = self.agent_argv()
        try:
            os.execve(argv[0], argv, self.env(None))
        except OSError as exc:
            log(f"error: cannot start {argv[0]}: {exc}")
            return 1

    def relaunch_self(self) -> NoReturn:
        argv = self.launcher_argv()
        os.execve(argv[0], argv, self.env(None))

    # -- roll back -------------------------------------------------------------------

    def rollback(self, trial: Trial, reason: str) -> int:
        """Each step as far as it goes (a full card may refuse launch.json):
        whatever happens, the agent that runs next is the one ``current`` names."""
        if trial.rolling_back is None:
            log(f"rolling back {trial.version}: {reason}")
            try:
                trial = self.slots.begin_rollback(trial, reason)
            except SlotError as exc:
                log(f"{exc}: rolling back without a record")
        try:
            target = self.slots.finish_rollback(trial)
        except (OSError, SlotError) as exc:
            log(f"roll back of {trial.version} incomplete: {exc}")
        else:
            if target is None:
                log(f"no version to go back to from {trial.version}: keeping it")
            else:
                log(f"rolled back to {target}")
        return self.direct()

    # -- supervisor ----------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signal = signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def supervise(self, trial: Trial) -> int:
        import subprocess

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        version = trial.version
        deadline = time.monotonic() + trial.health_timeout
        delay = self.args.restart_delay
        log(
            f"{version} on trial: healthy within {trial.health_timeout} s, "
            f"at most {self.args.max_starts} starts"
        )
        while True:
            trial_now = self.slots.trial()
            if trial_now is None or trial_now.version != version:
                return self.run()  # changed under us: decide again
            if trial_now.healthy:
                return self.end_trial_and_direct()
            if trial_now.starts >= self.args.max_starts:
                why = f"{version} did not become healthy in {trial_now.starts} starts"
                return self.rollback(trial_now, why + " (power cut or crash while on trial)")
            try:
                with self.slots.update() as state:  # counted before it happens
                    state["trial"]["starts"] = trial_now.starts + 1
            except SlotError as exc:  # starts that cannot be counted are not made
                return self.rollback(trial_now, f"cannot count the starts of {version}: {exc}")
            argv = self.agent_argv()
            log(f"starting {version} (start {trial_now.starts + 1} of {self.args.max_starts})")
            self.child = subprocess.Popen(argv, env=self.env(version), stderr=subprocess.PIPE)
            outcome, tail = self._watch(deadline)
            if outcome == "signal":
                return self._stop_child(signum=self.signal)
            if outcome in ("healthy", "deadline"):
                self._stop_child()
                trial_now = self.slots.trial()
                if trial_now is not None and trial_now.healthy:
                    log(f"{version} is healthy: restarting it in direct mode")
                    return self.end_trial_and_direct()
                if trial_now is None or trial_now.version != version:
                    return self.run()
                return self.rollback(
                    trial_now,
                    f"{version} was not healthy within {trial.health_timeout} s of starting",
                )
            code = self.child.returncode
            self.child = None
            if code == RELAUNCH_EXIT:
                log(f"{version} asked to run the launcher again")
                self.relaunch_self()
            trial_now = self.slots.trial()
            if trial_now is not None and trial_now.version == version and trial_now.healthy:
                continue  # marked healthy, then stopped: direct mode at the top
            how = _how(code)
            last = _last_line(tail)
            log(f"{version} stopped ({how})")
            starts = trial_now.starts if trial_now is not None else 0
            if trial_now is not None and starts >= self.args.max_starts:
                reason = f"{version} stopped at each of {starts} starts (last: {how}"
                reason += f": {last})" if last else ")"
                return self.rollback(trial_now, reason)
            if self._pause(delay, deadline):
                return 128 + (self.signal or 0)
            delay = min(delay * 2, 30.0)
            if time.monotonic() >= deadline and trial_now is not None:
                return self.rollback(
                    trial_now,
                    f"{version} was not healthy within {trial.health_timeout} s of starting",
                )

    def _pause(self, seconds: float, deadline: float) -> bool:
        """Wait ``seconds`` (or to the deadline); True if a signal came."""
        end = min(time.monotonic() + seconds, deadline)
        while self.signal is None:
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, _TICK))
        return True

    def _watch(self, deadline: float) -> tuple[str, bytes]:
        """Pass the agent's stderr on until it exits ("exited"), is marked
        healthy, the deadline passes, or a signal comes. The stderr's tail."""
        import selectors

        child = self.child
        assert child is not None and child.stderr is not None
        tail = bytearray()
        sel = selectors.DefaultSelector()
        sel.register(child.stderr, selectors.EVENT_READ)
        seen = self._state_stamp()
        outcome = "exited"
        try:
            while True:
                if self.signal is not None:
                    outcome = "signal"
                    break
                if child.poll() is not None:
                    break
                now = time.monotonic()
                if now >= deadline:
                    outcome = "deadline"
                    break
                for key, _ in sel.select(min(_TICK, deadline - now)):
                    if not _pass_on(key.fileobj, tail):
                        sel.unregister(key.fileobj)
                stamp = self._state_stamp()
                if stamp != seen:
                    seen = stamp
                    trial = self.slots.trial()
                    if trial is not None and trial.healthy:
                        outcome = "healthy"
                        break
            if outcome == "exited":  # what it wrote last, up to the end of the pipe
                until = time.monotonic() + 2.0
                while sel.get_map() and time.monotonic() < until and sel.select(0.5):
                    if not _pass_on(child.stderr, tail):
                        break
        finally:
            sel.close()
        return outcome, bytes(tail)

    def _state_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.slots.state_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _stop_child(self, *, signum: int | None = None) -> int:
        """Stop the agent with ``signum`` (SIGTERM), SIGKILL after
        --stop-timeout; its exit status as a shell would show it."""
        import subprocess

        child = self.child
        assert child is not None
        if child.poll() is None:
            child.send_signal(signum or signal.SIGTERM)
        try:
            code = child.wait(self.args.stop_timeout)
        except subprocess.TimeoutExpired:
            log("the agent did not stop: killing it")
            child.kill()
            code = child.wait()
        if child.stderr is not None:
            _drain(child.stderr)
            child.stderr.close()
        if code != 0:
            log(f"the agent stopped with {_how(code)}")
        self.child = None
        return int(code) if code >= 0 else 128 - int(code)


def _pass_on(f: Any, tail: bytearray) -> bool:
    """Copy what the agent wrote to stderr onto ours; False at its end."""
    try:
        data = os.read(f.fileno(), 65536)
    except BlockingIOError:
        return True
    if not data:
        return False
    try:
        os.write(2, data)
    except OSError:
        pass
    tail += data
    del tail[:-_TAIL]
    return True


def _drain(f: IO[bytes]) -> None:
    """Pass on what is left in the pipe, without waiting for more."""
    os.set_blocking(f.fileno(), False)
    scratch = bytearray()
    try:
        while _pass_on(f, scratch) and scratch:
            scratch.clear()
    except OSError:
        pass


def _how(code: int) -> str:
    return f"exit code {code}" if code >= 0 else f"signal {-code}"


def _last_line(tail: bytes) -> str:
    lines = [ln.strip() for ln in tail.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


if __name__ == "__main__":  # pragma: no cover - run through edgeagent._cli
    sys.exit(main(sys.argv[1:]))
