"""An MCP server built with the official SDK, for tests/tests/protocol_rules.rs.

Serves streamable HTTP on 127.0.0.1:PORT/mcp (PORT is argv[1]) with three tools.
Every tool call it runs is appended to the file argv[2], so the test can tell which
calls reached the server.
"""

import sys

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

PORT = int(sys.argv[1])
CALLS = sys.argv[2]

server = MCPServer("egress-proxy-test")


def record(name: str) -> None:
    with open(CALLS, "a", encoding="utf-8") as calls:
        calls.write(name + "\n")


@server.tool()
def search(query: str) -> str:
    """Search the test corpus."""
    record("search")
    return f"results for {query}"


@server.tool()
def read_file(path: str) -> str:
    """Read a file of the test corpus."""
    record("read_file")
    return f"contents of {path}"


@server.tool()
def delete_repo(name: str) -> str:
    """Delete a repository (the tool the policy forbids)."""
    record("delete_repo")
    return f"deleted {name}"


server.run(
    "streamable-http",
    host="127.0.0.1",
    port=PORT,
    # The proxy forwards `Host: mcp.test:PORT`; the test allows exactly that name.
    transport_security=TransportSecuritySettings(
        allowed_hosts=[f"mcp.test:{PORT}"], allowed_origins=[]
    ),
)
