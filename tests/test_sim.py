"""The simulator on the real core: a bounded slice of seeds in CI, replay is exact, and
the checkers catch a core with a known bug."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tinyraft.core.raft import Raft
from tinyraft.core.types import ReadState, Role, VoteResponse
from tinyraft.sim.cluster import SimConfig, Simulation, run_seed
from tinyraft.sim.runner import run_many

CI_SEEDS = int(os.environ.get("TINYRAFT_SIM_SEEDS", "300"))


def test_ci_slice_of_seeds_has_no_violation():
    """At least 300 seeds, 3 and 5 members, every fault kind on."""
    summary = run_many(list(range(CI_SEEDS)), [3, 5], jobs=os.cpu_count() or 1)
    assert summary["failed_seeds"] == []
    assert summary["violations"] == 0
    assert summary["linearizable"] == CI_SEEDS
    assert summary["operations"] > 100 * CI_SEEDS


def test_a_seed_replays_exactly_in_a_new_process():
    def trace(seed: int, hash_seed: int) -> str:
        code = (
            "from tinyraft.sim.cluster import Simulation, SimConfig\n"
            f"s = Simulation(SimConfig(seed={seed}, members=5)); r = s.run()\n"
            "print(len(s.history), r.stats, s.log[-1])"
        )
        env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout

    # Same seed, different set iteration orders: the very same run.
    assert trace(11, 1) == trace(11, 2) != trace(12, 1)


def test_faults_really_happen():
    sim = Simulation(SimConfig(seed=3, members=5))
    sim.run()
    assert sim.stats["crashes"] + sim.stats["partitions"] > 0
    assert sim.stats["config_changes"] > 0


class VotesWithoutLogCheck(Raft):
    """Grants votes without the up-to-date check (Raft §5.4.1)."""

    def _handle_vote_request(self, m):  # type: ignore[no-untyped-def]
        free = self.vote == m.src or (self.vote is None and self.leader is None)
        if free or (m.pre_vote and m.term > self.term):
            self.msgs.append(VoteResponse(m.term, self.id, m.src, True, pre_vote=m.pre_vote))
            if not m.pre_vote:
                self.vote = m.src
        else:
            self.msgs.append(VoteResponse(self.term, self.id, m.src, False, pre_vote=m.pre_vote))


class FollowersReadLocally(Raft):
    """Followers answer reads from their own commit index, without the leader."""

    def read_index(self, context: int, lease: bool = False) -> None:
        if self.role is Role.LEADER:
            super().read_index(context, lease)
        else:
            self.reads_out.append(ReadState(context, self.commit))


@pytest.mark.parametrize(
    ("buggy", "kind"),
    [(VotesWithoutLogCheck, "Leader Completeness"), (FollowersReadLocally, "linearizability")],
)
def test_checkers_catch_an_injected_bug(buggy, kind):
    for seed in range(80):
        result = run_seed(seed, 3, raft_class=buggy)
        if not result.ok:
            assert kind in result.violation
            assert result.replay_command() == f"tinyraft sim --seed {seed} --members 3 --verbose"
            return
    pytest.fail(f"80 seeds ran a core with a known bug and no checker noticed ({kind})")


def test_cli_prints_json_summary_and_fails_on_bad_flags():
    cli = [sys.executable, "-m", "tinyraft.cli", "sim"]
    ok = subprocess.run([*cli, "--seeds", "4", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout.strip().splitlines()[-1])
    assert summary["seeds"] == 4 and summary["violations"] == 0
    assert {"linearizable", "operations", "elapsed_s"} <= summary.keys()
    bad = subprocess.run([*cli, "--members", "zero"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--members" in bad.stderr
