"""What one loopback TCP round trip costs on this machine: ``python -m bench.loopback``.

An asyncio client and server in one process exchange a 50-byte message N times; the figure is CPU time
per round trip (both ends: two writes, two reads, the event loop, the kernel's TCP stack). Every hop of
the control plane (Postgres statement, NATS publish/ack, Kubernetes request) pays about this much per
message on each side, which is why socket writes are a third of the Python services' profiles here.
"""

from __future__ import annotations

import asyncio
import time


async def main(n: int = 5000) -> float:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    cpu = time.process_time()
    for _ in range(n):
        writer.write(b"x" * 50)
        await reader.read(100)
    per_rt = (time.process_time() - cpu) / n * 1e6
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return per_rt


if __name__ == "__main__":
    print(f"loopback TCP round trip: {asyncio.run(main()):.1f} µs of CPU (both ends, one process)")
