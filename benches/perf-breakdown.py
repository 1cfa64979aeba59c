#!/usr/bin/env python3
"""Where a server's CPU time goes, from folded stacks (inferno-collapse-perf).

    benches/perf-breakdown.py reports/perf/chat.folded [more.folded ...]

Each sample is charged to the first operation found walking its stack from
the leaf toward the root (so a malloc inside JSON parsing counts as parsing);
the table gives each operation's share of the samples. A second column gives
the share of samples whose leaf is in the allocator, per operation.
"""
import re
import sys

# (name, pattern over one frame), most specific first within a stack walk.
OPERATIONS = [
    ("JSON parse of client frames", r"serde_json::de|Deserialize for reference_server|from_str"),
    ("JSON serialize (message frames, acks)", r"serde_json::ser|Serialize for|to_json|splice_seq"),
    ("storage accept (memory store)", r"Store>::accept|store::memory|store::embedded|store::redis|store::postgres"),
    ("fan-out: hub and outbox", r"hub::Hub::deliver|outbox::Outbox::push|chat::App::fan_out"),
    ("channel lock, members, checks", r"chat::App::send|chat::App::members|batch_semaphore|Mutex<T>>::lock"),
    ("session: outbox take and wake", r"outbox::Outbox::take|Outbox::ready|Notify"),
    ("metrics and tracing", r"metrics::|tracing::|tracing_core"),
    ("WebSocket write (frame, syscall)", r"tungstenite::protocol::WebSocketContext::write|tungstenite.*send|Sink.*poll_flush|start_send|poll_write|tcp_sendmsg|__sys_sendto|sendto"),
    ("WebSocket read (frame, syscall)", r"tungstenite::protocol::WebSocketContext::read|read_message|poll_next|poll_read|recvfrom|tcp_recvmsg|__sys_recvfrom"),
    ("runtime: park, epoll, wake-ups", r"epoll|park|Driver::turn|schedule|wake|futex|try_to_wake_up"),
    ("HTTP and upgrade", r"hyper::|axum::routing"),
]
ALLOC = re.compile(r"malloc|free|realloc|_int_|cfree|alloc::raw_vec|memmove|memcpy")


def main(paths):
    for path in paths:
        totals = {}
        alloc = {}
        samples = 0
        for line in open(path):
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            samples += n
            name = "other (kernel network path, scheduler, misc.)"
            for frame in reversed(frames):
                hit = next((op for op, pat in OPERATIONS if re.search(pat, frame)), None)
                if hit:
                    name = hit
                    break
            totals[name] = totals.get(name, 0) + n
            if ALLOC.search(frames[-1]):
                alloc[name] = alloc.get(name, 0) + n
        print(f"{path}: {samples} samples")
        print(f"| operation | share of server CPU | of which allocator leaf |")
        print(f"|---|---:|---:|")
        for name, n in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {100 * n / samples:.1f}% | {100 * alloc.get(name, 0) / samples:.1f}% |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:] or ["reports/perf/chat.folded"])
