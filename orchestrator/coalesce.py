"""Coalescing of a job's token events for one stream that fell behind.

A stream that asked for it (GenerateRequest.coalesce) takes every event that is ready
when it gets to send, and consecutive `tokens` events of one choice go out as one:
token ids, text and logprobs concatenated, the seq and time of the last. Nothing is
delayed to make a batch: a stream keeping up sends one event per token as before; one
that is behind (a busy host, a slow reader) sends fewer, larger messages, and every
message saved is a gRPC write here and a read plus an HTTP chunk in the gateway.

Only a client that opted in sees the skipped seqs; the job's log and the store keep
every event, so StreamJob and resume are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from llama_orch.v1 import events_pb2


def coalesce(events: Iterable[events_pb2.JobEvent]) -> list[events_pb2.JobEvent]:
    """`events` in order, runs of same-choice `tokens` events merged into one."""
    out: list[events_pb2.JobEvent] = []
    run: list[events_pb2.JobEvent] = []
    for event in events:
        if (event.HasField("tokens") and run
                and event.tokens.choice_index == run[0].tokens.choice_index):
            run.append(event)
            continue
        if run:
            out.append(_merged(run))
            run = []
        if event.HasField("tokens"):
            run.append(event)
        else:
            out.append(event)
    if run:
        out.append(_merged(run))
    return out


def _merged(run: list[events_pb2.JobEvent]) -> events_pb2.JobEvent:
    if len(run) == 1:
        return run[0]
    last = run[-1]
    tokens = events_pb2.JobTokens(
        choice_index=last.tokens.choice_index,
        text="".join(e.tokens.text for e in run),
        token_ids=[t for e in run for t in e.tokens.token_ids],
        logprobs=[lp for e in run for lp in e.tokens.logprobs])
    return events_pb2.JobEvent(job_id=last.job_id, seq=last.seq, time=last.time, tokens=tokens)
