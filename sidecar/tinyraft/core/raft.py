"""One Raft member as a pure state machine (Ongaro's thesis; etcd-io/raft's Ready style).

Nothing here touches a socket, a file, a clock or an event loop. Time is `tick()`;
randomness is the injected `random.Random`. The runtime loop is:

    raft.tick() / raft.step(msg) / raft.propose(data) / raft.read_index(ctx) ...
    rd = raft.ready()
    send rd.messages_now; persist rd.hard_state, rd.snapshot, rd.entries (fsync if
    rd.must_sync); send rd.messages; apply rd.committed; serve rd.reads
    raft.advance(rd)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tinyraft.core.log import RaftLog
from tinyraft.core.progress import Progress, ProgressState
from tinyraft.core.types import (
    AppendEntries,
    AppendResponse,
    ConfigChangeRefused,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    MemberId,
    Message,
    NotLeader,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Ready,
    RequestVote,
    Role,
    SnapshotMeta,
    TimeoutNow,
    TooManyUncommitted,
    TransferInProgress,
    VoteResponse,
)


@dataclass(slots=True, frozen=True)
class Options:
    id: MemberId
    election_ticks: int = 10  # election timeout is random in [election_ticks, 2*election_ticks)
    heartbeat_ticks: int = 1
    max_inflight: int = 256  # append messages in flight per follower
    max_msg_bytes: int = 1 << 20  # data bytes per append message
    max_uncommitted_bytes: int = 64 << 20  # beyond this, proposals fail fast
    pre_vote: bool = True
    check_quorum: bool = True
    # Lease reads assume members' tick rates differ by less than this many ticks
    # per election timeout.
    lease_margin_ticks: int = 2

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.max_inflight < 1 or self.max_msg_bytes < 1:
            raise ValueError("max_inflight and max_msg_bytes must be positive")


@dataclass(slots=True)
class _Read:
    context: int
    requester: MemberId  # ourselves, or the follower that asked
    index: int = 0
    round: int = 0


class Raft:
    def __init__(
        self,
        options: Options,
        rng: random.Random,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: list[Entry] | None = None,
        applied: int | None = None,
    ) -> None:
        """Start (or restart) a member from its persisted state. `applied` is how far
        the state machine already is; by default, the snapshot it was restored from."""
        self.opts = options
        self.id = options.id
        self.rng = rng
        hs = hard_state or HardState()
        snap = snapshot or SnapshotMeta()
        self.log = RaftLog(snap, entries or [])
        self.term = hs.term
        self.vote = hs.vote
        self.commit = max(hs.commit, snap.index)
        self.applied = snap.index if applied is None else max(applied, snap.index)
        self.applying = self.applied  # handed out for applying, not yet advanced
        self.stable = self.log.last_index  # persisted
        self.handed = self.log.last_index  # handed out for persisting
        self.config = self.log.latest_config()
        self.role = Role.FOLLOWER
        self.leader: MemberId | None = None
        self.ticks = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self._reset_election_timer()
        # A restarted member may have promised a lease to a leader it forgot: it
        # ignores vote requests for one election timeout, as if it had one.
        self.lease_until = options.election_ticks
        self.progress: dict[MemberId, Progress] = {}
        self.votes: dict[MemberId, bool] = {}
        self.transferee: MemberId | None = None
        self.transfer_elapsed = 0
        self.pending_config_index = 0
        self.uncommitted_bytes = 0
        # ReadIndex: reads wait for the leader's first commit in its term, then for
        # a heartbeat round acknowledged by a quorum.
        self.reads_waiting_commit: list[_Read] = []
        self.reads_unsent: list[_Read] = []
        self.reads_pending: list[_Read] = []
        self.read_round = 0
        self.round_ticks: dict[int, int] = {}
        self.lease_start: int | None = None
        self.lease_disabled_term = 0
        # Output accumulated for the next Ready.
        self.msgs_now: list[Message] = []
        self.msgs: list[Message] = []
        self.reads_out: list[ReadState] = []
        self.snapshot_in: InstallSnapshot | None = None
        self.persisted_hs = HardState(hs.term, hs.vote, hs.commit)
        self.role_changed = False

    # ------------------------------------------------------------------ queries

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    def is_voter(self) -> bool:
        return self.id in self.config.voters

    def committed_in_term(self) -> bool:
        return self.log.term(self.commit) == self.term

    # ------------------------------------------------------------------ bootstrap

    def bootstrap(self, config: Configuration) -> None:
        """Give a brand-new member its first configuration (entry 1, term 1). Every
        member bootstrapped together must be given the same one."""
        if self.log.last_index or self.term:
            raise ConfigChangeRefused("bootstrap needs an empty member")
        if not config.voters:
            raise ConfigChangeRefused("bootstrap needs at least one voter")
        self.term = 1
        self._append([Entry(1, 1, EntryKind.CONFIG, config.encode())])

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        self.ticks += 1
        self.election_elapsed += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        elif self.election_elapsed >= self.randomized_timeout and self.is_voter():
            self.campaign(pre_vote=self.opts.pre_vote)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        if self.transferee is not None:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.opts.election_ticks:
                self.transferee = None  # not finished in time: abandoned
        if self.election_elapsed >= self.opts.election_ticks:
            self.election_elapsed = 0
            if self.opts.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
        for pr in self.progress.values():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks > 2 * self.opts.election_ticks:
                    pr.become_probe()  # the stream was lost without a report
        if self.heartbeat_elapsed >= self.opts.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def campaign(self, pre_vote: bool = False, transfer: bool = False) -> None:
        if not self.is_voter():
            return
        if pre_vote:
            self._set_role(Role.PRE_CANDIDATE)
            self.leader = None
            term = self.term + 1
        else:
            self._set_role(Role.CANDIDATE)
            self.term += 1
            self.vote = self.id
            self.leader = None
            term = self.term
        self._reset_election_timer()
        if pre_vote:
            # Unanswered pre-votes are asked again soon: a voter that still heard from
            # the leader less than an election timeout ago ignores them, but only for a
            # tick or two when it is the leader that died. (Refused ones make us a
            # follower again, with a full timeout.) Pre-votes change no term: asking
            # again disturbs nobody.
            self.randomized_timeout = min(self.randomized_timeout, 2 * self.opts.heartbeat_ticks)
        self.votes = {self.id: True}
        if self._tally() >= self.config.quorum():
            self._win(pre_vote)
            return
        for peer in sorted(self.config.voters - {self.id}):
            self.msgs.append(
                RequestVote(
                    term,
                    self.id,
                    peer,
                    self.log.last_index,
                    self.log.last_term,
                    pre_vote=pre_vote,
                    transfer=transfer,
                )
            )

    def propose(self, data: bytes) -> int:
        """Append a command batch; returns its log index. Raises a ProposalError."""
        self._check_proposable()
        size = len(data)
        limit = self.opts.max_uncommitted_bytes
        if self.uncommitted_bytes and self.uncommitted_bytes + size > limit:
            raise TooManyUncommitted(limit)
        index = self.log.last_index + 1
        self._append([Entry(index, self.term, EntryKind.NORMAL, data)])
        self.uncommitted_bytes += size
        return index

    def propose_config(self, op: str, member: MemberId, address: str | None = None) -> int:
        """One membership change at a time: op is add_learner (with the member's
        address), promote or remove. Returns the index of the configuration entry."""
        self._check_proposable()
        if not self.committed_in_term():
            raise ConfigChangeRefused(
                "the new leader has not committed in its term yet; retry", retryable=True
            )
        if self.pending_config_index > self.commit:
            raise ConfigChangeRefused(
                "another membership change is still in progress; retry", retryable=True
            )
        voters, learners = set(self.config.voters), set(self.config.learners)
        if op == "add_learner":
            if member in voters or member in learners:
                raise ConfigChangeRefused(f"member {member} is already in the cluster")
            learners.add(member)
        elif op == "promote":
            if member not in learners:
                raise ConfigChangeRefused(f"member {member} is not a learner")
            learners.discard(member)
            voters.add(member)
        elif op == "remove":
            if member not in voters and member not in learners:
                raise ConfigChangeRefused(f"member {member} is not in the cluster")
            if voters == {member}:
                raise ConfigChangeRefused("cannot remove the last voter")
            voters.discard(member)
            learners.discard(member)
        else:
            raise ConfigChangeRefused(f"unknown membership change {op!r}")
        config = self.config.with_members(voters, learners, {member: address} if address else {})
        index = self.log.last_index + 1
        self._append([Entry(index, self.term, EntryKind.CONFIG, config.encode())])
        return index

    def transfer_leadership(self, target: MemberId) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if target == self.id:
            return
        if target not in self.config.voters:
            raise ConfigChangeRefused(f"member {target} is not a voter")
        self.transferee = target
        self.transfer_elapsed = 0  # the transfer must finish within one election timeout
        pr = self.progress[target]
        if pr.match == self.log.last_index:
            self._send_timeout_now(target)
        else:
            self._send_append(target, pr)

    def read_index(self, context: int, lease: bool = False) -> None:
        """Ask for a linearizable read. A ReadState(context, index) comes out in a
        later Ready: serve the read once the state machine has applied `index`
        (index 0: failed, retry). With lease, a leader answers at once while its lease
        holds (assumes bounded clock drift, see Options.lease_margin_ticks)."""
        read = _Read(context, self.id)
        if self.role is Role.LEADER:
            self._leader_read(read, lease)
        elif self.leader is not None:
            self.msgs.append(ReadIndexRequest(self.term, self.id, self.leader, context))
        else:
            self.reads_out.append(ReadState(context, 0))

    def compact(self, index: int) -> None:
        """The runtime holds a durable snapshot of the state machine up to `index`."""
        if index <= self.log.snapshot.index:
            return
        if index > self.applied:
            raise ValueError(f"cannot compact to {index}: only {self.applied} applied")
        term = self.log.term(index)
        assert term is not None
        self.log.compact(SnapshotMeta(index, term, self.log.config_at(index)))

    def report_snapshot(self, peer: MemberId, ok: bool) -> None:
        """The runtime finished (or failed) streaming a snapshot to peer."""
        pr = self.progress.get(peer)
        if self.role is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.snapshot_index = 0
        pr.become_probe()

    # ------------------------------------------------------------------ messages

    def step(self, m: Message) -> None:
        if m.term > self.term:
            if isinstance(m, RequestVote):
                if not m.transfer and self._in_lease():
                    return  # we heard from a live leader: do not let a stray member disrupt it
                if m.pre_vote:
                    self._handle_vote_request(m)
                    return
                self._become_follower(m.term, None)
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # a granted pre-vote carries the term we would campaign in
            else:
                leader = (
                    m.src if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)) else None
                )
                self._become_follower(m.term, leader)
        elif m.term < self.term:
            if isinstance(m, (AppendEntries, Heartbeat)):
                # A deposed leader: tell it the new term so it steps down.
                self.msgs.append(AppendResponse(self.term, self.id, m.src, False, 0))
            elif isinstance(m, RequestVote) and m.pre_vote:
                self.msgs.append(VoteResponse(self.term, self.id, m.src, False, pre_vote=True))
            elif isinstance(m, ReadIndexRequest):
                # Fail the stale member's read at once (and teach it the new term).
                self.msgs.append(ReadIndexResponse(self.term, self.id, m.src, m.context, 0))
            return

        if isinstance(m, RequestVote):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _handle_vote_request(self, m: RequestVote) -> None:
        up_to_date = m.last_term > self.log.last_term or (
            m.last_term == self.log.last_term and m.last_index >= self.log.last_index
        )
        can_vote = (
            self.vote == m.src
            or (self.vote is None and self.leader is None)
            or (m.pre_vote and m.term > self.term)
        ) and not self._stands_in_a_tie(m)
        if can_vote and up_to_date:
            # A pre-vote answer carries the candidate's term, so it is not ignored.
            self.msgs.append(VoteResponse(m.term, self.id, m.src, True, pre_vote=m.pre_vote))
            if not m.pre_vote:
                self.vote = m.src
                self.election_elapsed = 0
        else:
            self.msgs.append(VoteResponse(self.term, self.id, m.src, False, pre_vote=m.pre_vote))

    def _stands_in_a_tie(self, m: RequestVote) -> bool:
        """Whether this pre-candidate refuses m, another pre-vote for the same term.

        Two members that time out together (both heard the dead leader's last heartbeat)
        would pass each other's pre-vote and split the real vote, each voting for itself:
        another whole election timeout. With equal logs the lower id stands and the
        other grants it; a longer log still wins, whatever its id. Only a pre-vote is
        refused, so this changes who stands, never what is safe."""
        return (
            m.pre_vote
            and self.role is Role.PRE_CANDIDATE
            and m.term == self.term + 1
            and self.id < m.src
            and (m.last_term, m.last_index) == (self.log.last_term, self.log.last_index)
        )

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            self._become_follower(m.term, m.src)
            self._step_follower(m)
        elif isinstance(m, VoteResponse):
            if m.pre_vote != (self.role is Role.PRE_CANDIDATE):
                return
            if m.src in self.config.voters:
                self.votes.setdefault(m.src, m.granted)
            if self._tally() >= self.config.quorum():
                self._win(m.pre_vote)
            elif len(self.votes) - self._tally() >= self.config.quorum():
                self._become_follower(self.term, None)
        elif isinstance(m, TimeoutNow):
            self.campaign(transfer=True)
        elif isinstance(m, ReadIndexResponse):
            self.reads_out.append(ReadState(m.context, m.index))

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, AppendEntries):
            self._heard_from_leader(m.src)
            self._handle_append(m)
        elif isinstance(m, Heartbeat):
            self._heard_from_leader(m.src)
            if m.commit > self.commit:
                self._commit_to(min(m.commit, self.log.last_index))
            self.msgs.append(HeartbeatResponse(self.term, self.id, m.src, m.read_round))
        elif isinstance(m, InstallSnapshot):
            self._heard_from_leader(m.src)
            self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow):
            self.campaign(transfer=True)
        elif isinstance(m, ReadIndexResponse):
            self.reads_out.append(ReadState(m.context, m.index))

    def _heard_from_leader(self, leader: MemberId) -> None:
        self.election_elapsed = 0
        if self.leader != leader:
            self.leader = leader
            self.role_changed = True

    def _handle_append(self, m: AppendEntries) -> None:
        if m.prev_index < self.commit:
            # Everything up to our commit already matches; only the rest is news.
            skip = self.commit - m.prev_index
            if skip >= len(m.entries):
                self.msgs.append(AppendResponse(self.term, self.id, m.src, True, self.commit))
                return
            prev = m.entries[skip - 1]
            m = AppendEntries(
                m.term, m.src, m.dst, prev.index, prev.term, m.entries[skip:], m.commit
            )
        if not self.log.matches(m.prev_index, m.prev_term):
            hint = self.log.hint_before(m.prev_index, m.prev_term)
            self.msgs.append(
                AppendResponse(
                    self.term,
                    self.id,
                    m.src,
                    False,
                    m.prev_index,
                    hint_index=hint,
                    hint_term=self.log.term(hint) or 0,
                )
            )
            return
        entries = m.entries
        conflict = self.log.find_conflict(entries)
        if conflict:
            if conflict <= self.commit:
                raise AssertionError(f"entry {conflict} conflicts with committed {self.commit}")
            if conflict <= self.log.last_index:
                self._truncate_from(conflict)
            self._append(entries[conflict - entries[0].index :])
        last_new = m.prev_index + len(entries)
        if m.commit > self.commit:
            self._commit_to(min(m.commit, last_new))
        self.msgs.append(AppendResponse(self.term, self.id, m.src, True, last_new))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        meta = m.meta
        if meta.index <= self.commit:
            self.msgs.append(AppendResponse(self.term, self.id, m.src, True, self.commit))
            return
        if self.log.matches(meta.index, meta.term):
            # We already have the snapshot's entries: keep the log (Figure 13, rule 6).
            self._commit_to(meta.index)
        else:
            # Discard the whole log and take the snapshot's state (Figure 13, rule 7).
            self.log.reset(meta)
            self.config = meta.config
            self.commit = self.applied = self.applying = meta.index
            self.stable = self.handed = meta.index
            self.snapshot_in = m
        self.msgs.append(AppendResponse(self.term, self.id, m.src, True, meta.index))

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.src)
        if isinstance(m, ReadIndexRequest):
            if pr is None:  # we do not replicate to it: it could never catch up to the index
                self._answer_read(_Read(m.context, m.src), 0)
            else:
                self._leader_read(_Read(m.context, m.src), lease=False)
            return
        if pr is None:
            return  # not (or no longer) a member
        pr.recent_active = True
        if isinstance(m, AppendResponse):
            self._handle_append_response(m, pr)
        elif isinstance(m, HeartbeatResponse):
            if pr.state is ProgressState.PROBE:
                pr.probe_sent = False
            elif pr.state is ProgressState.REPLICATE and pr.paused():
                pr.inflight.popleft()  # messages may have been lost: let one more through
            if pr.match < self.log.last_index:
                # Appends may have been lost: even an empty one draws a rejection that
                # tells us where the follower really is.
                self._send_append(m.src, pr, allow_empty=True)
            if m.read_round > pr.acked_round:
                pr.acked_round = m.read_round
                self._release_confirmed_reads()

    def _handle_append_response(self, m: AppendResponse, pr: Progress) -> None:
        if not m.success:
            # Fast back-off: skip every entry of terms the follower cannot have.
            next_index = self.log.hint_before(m.hint_index, m.hint_term) + 1
            if pr.reject(m.index, next_index):
                self._send_append(m.src, pr)
            return
        old_paused = pr.paused()
        if not pr.acknowledge(m.index):
            if old_paused and not pr.paused():
                self._send_append(m.src, pr)
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.snapshot_index:
            pr.become_probe()
            pr.become_replicate()
        if self._maybe_commit():
            self._on_leader_commit()
        if self.role is not Role.LEADER:
            return
        self._send_append(m.src, pr)
        if m.src == self.transferee and pr.match == self.log.last_index:
            self._send_timeout_now(m.src)

    # ------------------------------------------------------------------ output

    def has_ready(self) -> bool:
        return bool(
            self.msgs
            or self.msgs_now
            or self.reads_out
            or self.reads_unsent
            or self.snapshot_in
            or self.role_changed
            or self.handed < self.log.last_index
            or self.applying < min(self.commit, self.stable)
            or self._vote_unsaved()
        )

    def _vote_unsaved(self) -> bool:
        saved = self.persisted_hs
        return self.term != saved.term or self.vote != saved.vote

    def ready(self) -> Ready:
        if self.role is Role.LEADER:
            if self.reads_unsent:
                self._broadcast_heartbeat()
            self._broadcast_new_entries()
        rd = Ready()
        hs = self.hard_state
        term_unsaved = self._vote_unsaved()
        # A new commit index alone is not worth a write: it rides along with the next
        # entries, term or vote. Lost in a crash, it only means replaying less of the
        # log until the leader says again (the paper keeps it in volatile state).
        if term_unsaved or (hs != self.persisted_hs and self.handed < self.log.last_index):
            rd.must_sync = term_unsaved
            rd.hard_state = hs
            self.persisted_hs = hs
        if self.snapshot_in is not None:
            rd.snapshot = self.snapshot_in
            rd.must_sync = True
            self.snapshot_in = None
        if self.handed < self.log.last_index:
            rd.entries = self.log.slice(self.handed + 1, self.log.last_index + 1)
            rd.must_sync = True
            self.handed = self.log.last_index
        upto = min(self.commit, self.stable)
        if self.applying < upto:
            rd.committed = self.log.slice(self.applying + 1, upto + 1)
            self.applying = upto
        if term_unsaved:
            # A message carries our term: it may leave only once that term is on disk,
            # or a crash could let us reuse the term for different entries.
            rd.messages = self.msgs_now + self.msgs
        else:
            rd.messages_now = self.msgs_now
            rd.messages = self.msgs
        self.msgs_now, self.msgs = [], []
        rd.reads, self.reads_out = self.reads_out, []
        if self.role_changed:
            rd.role = self.role
            rd.leader = self.leader
            self.role_changed = False
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.entries:
            # Only the part of the batch that is still our log counts as persisted.
            last = rd.entries[-1]
            if self.log.matches(last.index, last.term):
                self.stable = max(self.stable, last.index)
            else:
                for e in rd.entries:
                    if not self.log.matches(e.index, e.term):
                        break
                    self.stable = max(self.stable, e.index)
            if self.role is Role.LEADER and self.id in self.progress:
                self.progress[self.id].acknowledge(self.stable)
                if self._maybe_commit():
                    self._on_leader_commit()
        if rd.committed:
            self.applied = max(self.applied, rd.committed[-1].index)

    # ------------------------------------------------------------------ leader internals

    def _check_proposable(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.transferee is not None:
            raise TransferInProgress()

    def _broadcast_new_entries(self) -> None:
        # A new commit index alone sends nothing: followers learn it with the next
        # append or heartbeat (as hashicorp/raft does), so they do not apply in step
        # with the leader and take the CPU its own apply and answer need.
        last = self.log.last_index
        for peer, pr in self.progress.items():
            if peer != self.id and pr.next <= last:
                self._send_append(peer, pr)

    def _send_append(self, peer: MemberId, pr: Progress, allow_empty: bool = False) -> None:
        if pr.paused():
            return
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            if prev < self.log.snapshot.index:
                self._send_snapshot(peer, pr)
            return
        entries = self.log.slice(pr.next, self.log.last_index + 1, self.opts.max_msg_bytes)
        if not entries and not allow_empty:
            return
        self.msgs_now.append(
            AppendEntries(self.term, self.id, peer, prev, prev_term, entries, self.commit)
        )
        if entries:
            pr.sent(entries[-1].index)

    def _send_snapshot(self, peer: MemberId, pr: Progress) -> None:
        meta = self.log.snapshot
        pr.become_snapshot(meta.index)
        self.msgs_now.append(InstallSnapshot(self.term, self.id, peer, meta))

    def _send_timeout_now(self, target: MemberId) -> None:
        # The target will campaign past its peers' leases, even if this message is
        # delayed or duplicated: our lease cannot be trusted for the rest of the term.
        self.lease_disabled_term = self.term
        self.msgs_now.append(TimeoutNow(self.term, self.id, target))

    def _broadcast_heartbeat(self) -> None:
        self.read_round += 1
        self.round_ticks[self.read_round] = self.ticks
        if len(self.round_ticks) > 4 * self.opts.election_ticks:
            del self.round_ticks[min(self.round_ticks)]  # never acknowledged: forget it
        for read in self.reads_unsent:
            read.round = self.read_round
        self.reads_pending.extend(self.reads_unsent)
        self.reads_unsent = []
        for peer, pr in self.progress.items():
            if peer != self.id:
                commit = min(pr.match, self.commit)
                self.msgs_now.append(
                    Heartbeat(self.term, self.id, peer, commit, read_round=self.read_round)
                )
        self._release_confirmed_reads()

    def _quorum_round(self) -> int:
        """The latest heartbeat round a quorum of voters has acknowledged."""
        rounds = sorted(
            (
                self.read_round if v == self.id else self.progress[v].acked_round
                for v in self.config.voters
                if v in self.progress
            ),
            reverse=True,
        )
        q = self.config.quorum()
        return rounds[q - 1] if len(rounds) >= q else 0

    def _release_confirmed_reads(self) -> None:
        confirmed = self._quorum_round()
        if confirmed and confirmed in self.round_ticks:
            self.lease_start = self.round_ticks[confirmed]
            for r in [r for r in self.round_ticks if r <= confirmed]:
                del self.round_ticks[r]
        if not self.reads_pending or self.reads_pending[0].round > confirmed:
            return
        keep = []
        for read in self.reads_pending:
            if read.round <= confirmed:
                self._answer_read(read, read.index)
            else:
                keep.append(read)
        self.reads_pending = keep

    def _leader_read(self, read: _Read, lease: bool) -> None:
        if self.transferee is not None:
            self._answer_read(read, 0)
        elif not self.committed_in_term():
            self.reads_waiting_commit.append(read)
        elif lease and self._lease_valid():
            self._answer_read(read, self.commit)
        else:
            read.index = self.commit
            self.reads_unsent.append(read)

    def _lease_valid(self) -> bool:
        if not self.opts.check_quorum or self.lease_start is None:
            return False
        if self.lease_disabled_term == self.term:
            return False
        lease = self.opts.election_ticks - self.opts.lease_margin_ticks
        return self.ticks - self.lease_start < lease

    def _answer_read(self, read: _Read, index: int) -> None:
        if read.requester == self.id:
            self.reads_out.append(ReadState(read.context, index))
        else:
            self.msgs.append(
                ReadIndexResponse(self.term, self.id, read.requester, read.context, index)
            )

    def _maybe_commit(self) -> bool:
        matches = sorted(
            (self.progress[v].match for v in self.config.voters if v in self.progress),
            reverse=True,
        )
        q = self.config.quorum()
        if len(matches) < q:
            return False
        index = matches[q - 1]
        # Only entries of the current term are committed by counting (thesis §3.6.2).
        if index > self.commit and self.log.term(index) == self.term:
            self._commit_to(index)
            return True
        return False

    def _on_leader_commit(self) -> None:
        if self.reads_waiting_commit and self.committed_in_term():
            waiting, self.reads_waiting_commit = self.reads_waiting_commit, []
            for read in waiting:
                self._leader_read(read, lease=False)
        if self.pending_config_index <= self.commit and not self.is_voter():
            # Our removal (or demotion) is committed: hand over to the remaining voters.
            self._become_follower(self.term, None)

    def _quorum_active(self) -> bool:
        active = sum(
            1
            for v in self.config.voters
            if v == self.id or (v in self.progress and self.progress[v].recent_active)
        )
        for pr in self.progress.values():
            pr.recent_active = False
        return active >= self.config.quorum()

    # ------------------------------------------------------------------ shared internals

    def _append(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        for e in entries:
            if e.kind is EntryKind.CONFIG:
                self._apply_config(Configuration.decode(e.data), e.index)

    def _truncate_from(self, index: int) -> None:
        had_config = self.log.last_config_index() >= index
        self.log.truncate_from(index)
        self.stable = min(self.stable, index - 1)
        self.handed = min(self.handed, index - 1)
        if had_config:
            self._apply_config(self.log.latest_config(), self.log.last_config_index())

    def _apply_config(self, config: Configuration, index: int) -> None:
        """Configurations take effect when appended (thesis §4.1)."""
        self.config = config
        self.pending_config_index = max(self.pending_config_index, index)
        if self.role is not Role.LEADER:
            return
        for member in sorted(config.members - self.progress.keys()):
            self.progress[member] = Progress(self.log.last_index + 1, self.opts.max_inflight)
        for member in self.progress.keys() - config.members - {self.id}:
            del self.progress[member]
        if self.transferee is not None and self.transferee not in config.voters:
            self.transferee = None
        if self._maybe_commit():
            self._on_leader_commit()

    def _commit_to(self, index: int) -> None:
        if index <= self.commit:
            return
        if self.role is Role.LEADER and self.uncommitted_bytes:
            for e in self.log.slice(self.commit + 1, index + 1):
                if e.term == self.term:  # earlier terms' entries were never counted
                    self.uncommitted_bytes -= len(e.data)
            self.uncommitted_bytes = max(self.uncommitted_bytes, 0)
        self.commit = index

    def _tally(self) -> int:
        return sum(1 for v, granted in self.votes.items() if granted and v in self.config.voters)

    def _win(self, pre_vote: bool) -> None:
        if pre_vote:
            self.campaign(pre_vote=False)
        else:
            self._become_leader()

    def _in_lease(self) -> bool:
        if self.ticks < self.lease_until:
            return True
        return (
            self.opts.check_quorum
            and self.leader is not None
            and self.election_elapsed < self.opts.election_ticks
        )

    def _reset_election_timer(self) -> None:
        self.election_elapsed = 0
        e = self.opts.election_ticks
        self.randomized_timeout = e + self.rng.randrange(e)

    def _set_role(self, role: Role) -> None:
        if role is not self.role:
            self.role = role
            self.role_changed = True

    def _become_follower(self, term: int, leader: MemberId | None) -> None:
        was_leader = self.role is Role.LEADER
        if term > self.term:
            self.term = term
            self.vote = None
        self._set_role(Role.FOLLOWER)
        if self.leader != leader:
            self.leader = leader
            self.role_changed = True
        self._reset_election_timer()
        if was_leader:
            self._abandon_leadership()

    def _abandon_leadership(self) -> None:
        for read in self.reads_waiting_commit + self.reads_unsent + self.reads_pending:
            self._answer_read(read, 0)
        self.reads_waiting_commit, self.reads_unsent, self.reads_pending = [], [], []
        self.round_ticks.clear()
        self.lease_start = None
        self.progress = {}
        self.transferee = None
        self.uncommitted_bytes = 0

    def _become_leader(self) -> None:
        self._set_role(Role.LEADER)
        self.leader = self.id
        self.transferee = None
        self.heartbeat_elapsed = 0
        self.election_elapsed = 0
        self.read_round = 0
        self.lease_start = None
        last = self.log.last_index
        # Sorted, so that message order (and so a simulation) is the same in every process.
        self.progress = {
            m: Progress(last + 1, self.opts.max_inflight) for m in sorted(self.config.members)
        }
        if self.id not in self.progress:
            self.progress[self.id] = Progress(last + 1, self.opts.max_inflight)
        self.progress[self.id].acknowledge(self.stable)
        self.progress[self.id].become_replicate()
        # Conservatively treat any config entry in our log as not yet committed.
        self.pending_config_index = self.log.last_config_index()
        self.uncommitted_bytes = 0
        self._append([Entry(last + 1, self.term, EntryKind.NOOP)])
