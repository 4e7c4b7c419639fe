"""A shopping basket that empties itself after a spell of inactivity.

The basket session expires `seconds` after the last item was added
(extendOnSetAdd=True). On expiry only the items are removed
(deleteSession=False): the shopper keeps the same session and can start
filling the basket again.

Run a server, then: python3 examples/shopping_basket.py [ws://127.0.0.1:1987/] [seconds]
"""

import asyncio
import sys
from typing import Any, Dict

from ndb.sessionclient import SessionClient


async def main(uri: str = "ws://127.0.0.1:1987/", seconds: int = 3) -> Dict[str, Any]:
    async with SessionClient(uri) as client:
        basket = await client.create_session(
            durationSeconds=seconds, deleteSession=False, extendOnSetAdd=True
        )
        print(f"basket {basket.tkn}: expires after {seconds}s without additions")

        await client.add({"apples": 6, "bread": 1}, basket.tkn)
        await asyncio.sleep(seconds / 2)
        await client.add(
            {"coffee": {"beans": "arabica", "grams": 500}}, basket.tkn
        )  # restarts the clock
        await asyncio.sleep(seconds / 2)
        before = await client.get(("apples", "bread", "coffee"), basket.tkn)
        print(f"after {seconds}s of shopping: {before}")

        info = await client.session_info(basket.tkn)
        print(f"expiry: {info['expiry']}")

        print(f"shopper walks away for {seconds + 1}s...")
        await asyncio.sleep(seconds + 1)
        after = await client.get(("apples", "bread", "coffee"), basket.tkn)
        count = await client.count(basket.tkn)
        alive = await client.session_exists(basket.tkn)
        print(f"basket now: {after} ({count} items), session still there: {bool(alive)}")

        await client.add({"milk": 2}, basket.tkn)
        print(f"new basket: {await client.get('milk', basket.tkn)}")
        await client.end_session(basket.tkn)

    return {"before": before, "after": after, "count": count, "alive": bool(alive)}


if __name__ == "__main__":
    uri = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:1987/"
    asyncio.run(main(uri, int(sys.argv[2]) if len(sys.argv) > 2 else 3))
