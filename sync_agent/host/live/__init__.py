"""The live stream: every open page of the host gets the shared data and release switches as they land.

`sse` is the wire format, `hub` what to send (no I/O), `http` the little HTTP the listener speaks, `listener`
the socket (from systemd or bound), `server` the requests and resumes, `feed` the agent's end of the fan-out
process and `fanout` that process, which writes every change to every stream. docs/protocol.md, "The live stream".

Nothing is imported here: the fan-out process starts as `python -m sync_agent.host.live.fanout` and needs only the
standard library.
"""
