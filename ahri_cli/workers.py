"""The process between ``ahri ... --nproc N`` and its N workers: torchrun's own launcher (rendezvous, one
worker per rank, the others stopped when one fails), with its outcome told in one line instead of the
launcher's traceback. Run as ``python -m ahri_cli.workers <torchrun arguments>``.

Exit code: the workers' (0, 1 or 2 when they agree), 130 when a signal stopped them, 1 when one of them was
killed (by the kernel when memory ran out, say) or failed in some other way.
"""

from __future__ import annotations

import signal
import sys

# exit codes of a worker stopped by Ctrl-C or SIGTERM (the launcher's own stop), never the cause of a failure
STOPPED = (-int(signal.SIGINT), -int(signal.SIGTERM))


def _outcome(failures: dict) -> tuple[int, str | None]:
    """The exit code and the line to show for the workers that failed (rank -> ProcessFailure)."""
    codes = {f.exitcode for f in failures.values()}
    if codes <= {130, *STOPPED}:  # stopped by Ctrl-C or SIGTERM (after their checkpoint)
        return 130, None
    if len(codes) == 1 and codes <= {1, 2}:  # each worker already said why, in one line
        return codes.pop(), None
    # a process killed by a signal other than the launcher's own stop (SIGINT, SIGTERM) is the cause: the others
    # then fail on the lost connection, and can be seen ending first when they exit faster than the kill is noticed
    killed = {r: f for r, f in failures.items() if f.exitcode < 0 and f.exitcode not in STOPPED}
    rank, first = min((killed or failures).items(), key=lambda kv: kv[1].timestamp)
    if first.exitcode < 0:
        how = f"was killed by {first.signal_name()}"
        if first.signal_name() == "SIGKILL":
            how += " (the kernel does this when memory runs out)"
    else:
        how = f"ended with exit code {first.exitcode}"
    return 1, (f"process {rank} of the run {how}; the other processes were stopped. "
               "The last checkpoint is kept: add --resume to continue from it")


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        code, line = _outcome(e.failures)
        if line:
            print(f"error: {line}", file=sys.stderr, flush=True)
        return code
    except SignalException:
        return 130
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
