"""An MCP client built with the official SDK, for tests/tests/protocol_rules.rs.

Connects to argv[1] (through HTTP_PROXY, which the SDK's HTTP client honours), lists
the tools, calls an allowed one and a forbidden one, and prints one JSON object with
what it saw.
"""

import asyncio
import json
import sys

from mcp import Client


async def main() -> None:
    seen = {}
    async with Client(sys.argv[1]) as client:
        tools = await client.list_tools()
        seen["tools"] = sorted(tool.name for tool in tools.tools)
        result = await client.call_tool("search", {"query": "egress"})
        seen["search"] = [block.text for block in result.content]
        try:
            await client.call_tool("delete_repo", {"name": "acme/widgets"})
            seen["delete_repo"] = "no error"
        except Exception as error:  # the SDK raises its MCP error type
            seen["delete_repo_error"] = type(error).__name__
            seen["delete_repo"] = str(error)
    print(json.dumps(seen))


asyncio.run(main())
