"""Save the carts of shoppers who walked away, the moment their session expires.

Each shopper's cart lives in a session that expires after `seconds` of
inactivity (deleteSession=True: the session and its keys go). A saver
subscribes to `expired` events with withKeys=True, so every event carries
the keys the session held at its deadline, and files the cart away (here in
a dict; in a shop, a table for "you left something in your cart" emails).
A shopper who checks out ends the session instead: that is an `ended`
event, which the saver does not ask for.

Run a server, then: python3 examples/expiring_carts.py [ws://127.0.0.1:1987/] [seconds]
"""

import asyncio
import sys
from typing import Any, Dict, List

from ndb.sessionclient import SessionClient


# The README's example (section "Session events").
async def save_expiring_carts(client, save):
    async for event in client.events(["expired"], withKeys=True):
        if event.event == "lost":
            # Expiries this saver will never see (it fell far behind, or the
            # server restarted): their carts are gone. Say so, then go on.
            print(f"missed {event.lost} expiries (-1: unknown)")
            continue
        cart = event.keys.get("cart")
        if cart:
            await save(event.tkn, event.owner, cart)


async def main(uri: str = "ws://127.0.0.1:1987/", seconds: int = 1) -> Dict[str, Any]:
    saved: Dict[str, List[str]] = {}
    all_saved = asyncio.Event()
    async with SessionClient(uri) as client:
        carts = {}
        for shopper, items in [
            ("ann", ["tea", "scones"]),
            ("bob", ["socks"]),
            ("carl", ["kettle"]),
        ]:
            session = await client.create_session(
                seconds, deleteSession=True, owner=shopper, keys={"cart": items}
            )
            carts[session.tkn] = shopper

        async def save(tkn: int, owner: str, cart: List[str]) -> None:
            if tkn not in carts:
                return  # another program's session on the same server
            saved[owner] = cart
            print(f"saved {owner}'s cart: {cart}")
            if len(saved) == 2:
                all_saved.set()

        # The saver subscribes within milliseconds, long before the first deadline.
        saver = asyncio.ensure_future(save_expiring_carts(client, save))
        bob = next(tkn for tkn, shopper in carts.items() if shopper == "bob")
        await client.end_session(bob)
        print(f"carts expire after {seconds}s without activity; bob checks out")
        try:
            await asyncio.wait_for(all_saved.wait(), seconds + 10)
        finally:
            saver.cancel()  # leaving its loop closes the subscription
            await asyncio.gather(saver, return_exceptions=True)
        left = await client.session_exists(list(carts))
    print(f"sessions left: {len(left)}")
    return {"saved": saved, "left": left}


if __name__ == "__main__":
    uri = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:1987/"
    asyncio.run(main(uri, int(sys.argv[2]) if len(sys.argv) > 2 else 1))
