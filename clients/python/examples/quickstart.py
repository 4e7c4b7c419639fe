"""Quick start: create a session, set keys, get them back.

Run a server, then: python3 examples/quickstart.py [ws://127.0.0.1:1987/]
"""

import asyncio
import sys

from ndb.sessionclient import SessionClient


async def main(uri: str = "ws://127.0.0.1:1987/") -> dict:
    client = SessionClient()
    await client.open(uri)

    session = await client.create_session()
    print(f"session token: {session.tkn} (valid: {session.isValid})")

    await client.set({"key1": "value1", "key2": 2, "key3": [1, 2, 3]}, session.tkn)
    values = await client.get(("key1", "key2", "key3", "missing"), session.tkn)
    print(f"get: {values}")
    print(f"count: {await client.count(session.tkn)}")

    await client.end_session(session.tkn)
    print(f"exists after end: {await client.session_exists([session.tkn])}")
    await client.close()
    return values


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:2]))
