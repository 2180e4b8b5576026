"""Inside a sandbox: 127.0.0.1:<port> -> the gateway's Unix socket, bytes both ways, nothing parsed.

Standard library only and run as `python -I -S -c <this file's text> HOST PORT SOCKET`, so it works in any
sandbox that has the Python the trial runs with (bwrap binds it, the Docker image is built from it). It is
started inside the sandbox's own network namespace, which has no interface but loopback: this port is the
one way out. It prints `listening <port>` once it accepts connections (port 0 picks a free one).
"""

import asyncio
import sys

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half-close, so a reply still in flight the other way is not cut
    except (ConnectionError, OSError):
        pass


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


def _serve(socket_path: str):
    async def connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_unix_connection(socket_path)
        except OSError:
            await _close(client_w)
            return
        await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
        await _close(up_w)
        await _close(client_w)

    return connection


async def main(host: str, port: int, socket_path: str) -> None:
    server = await asyncio.start_server(_serve(socket_path), host, port, backlog=1024)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
