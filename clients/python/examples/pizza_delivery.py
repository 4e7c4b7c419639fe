"""A pizza delivery order held in a session, ended once the pizza arrives.

The shop creates a shared session named after the order; the kitchen and
the driver, on their own connections, open it by name to update the status.
On delivery the order session is ended: its keys and its name are gone.
An expiry of one hour with deleteSession=True cleans up abandoned orders.

Run a server, then: python3 examples/pizza_delivery.py [ws://127.0.0.1:1987/]
"""

import asyncio
import secrets
import sys
from typing import Any, Dict, List

from ndb.sessionclient import SessionClient


async def main(uri: str = "ws://127.0.0.1:1987/") -> Dict[str, Any]:
    order_name = f"order-{secrets.randbelow(10**6):06d}"
    history: List[str] = []

    async with (
        SessionClient(uri) as shop,
        SessionClient(uri) as kitchen,
        SessionClient(uri) as driver,
    ):
        # The customer orders: one session per order, found by name from any connection.
        order = await shop.create_session(
            durationSeconds=3600, deleteSession=True, name=order_name, shared=True
        )
        await shop.set(
            {
                "customer": "Ada",
                "address": "12 Analytical Row",
                "items": [{"pizza": "margherita", "size": "L"}, {"pizza": "diavola", "size": "M"}],
                "status": "ordered",
            },
            order.tkn,
        )
        history.append((await shop.get("status", order.tkn))["status"])
        print(f"{order_name}: ordered (token {order.tkn})")

        # The kitchen picks the order up by name.
        ticket = await kitchen.open_session(order_name)
        assert ticket.tkn == order.tkn
        for status in ("baking", "boxed"):
            await kitchen.set({"status": status}, ticket.tkn)
            history.append((await kitchen.get("status", ticket.tkn))["status"])
            print(f"{order_name}: {status}")

        # The driver takes it out and delivers it.
        run = await driver.open_session(order_name)
        details = await driver.get(("address", "items"), run.tkn)
        await driver.set({"status": "out for delivery"}, run.tkn)
        history.append("out for delivery")
        print(
            f"{order_name}: out for delivery to {details['address']}"
            f" with {len(details['items'])} pizzas"
        )

        # Delivered: the order is finished, so its session goes.
        await driver.end_session(run.tkn)
        history.append("delivered")
        print(f"{order_name}: delivered, session ended")

        exists = await shop.session_exists([order.tkn])
        print(f"order session still exists: {bool(exists)}")

    return {"order": order_name, "token": order.tkn, "history": history, "exists": exists}


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:2]))
