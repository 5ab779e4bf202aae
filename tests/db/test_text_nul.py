"""A NUL character in text from a stranger's mail is stored on both databases (PostgreSQL
refuses NUL in text: there it becomes U+FFFD), by one statement or many."""

from __future__ import annotations

from sqlalchemy import insert, select

from listserv.core.app import App
from listserv.core.models import Address


def test_text_with_a_nul_is_stored(app: App) -> None:
    with app.db.unit_of_work() as session:
        session.add(Address(email="one@nul.example", display_name="Ann\x00Eve"))
        session.execute(insert(Address), [
            {"email": "two@nul.example", "display_name": "Bob\x00"},
            {"email": "three@nul.example", "display_name": "plain"}])
    with app.db.unit_of_work() as session:
        names = dict(session.execute(select(Address.email, Address.display_name)
                                     .where(Address.email.like("%@nul.example"))).all())
    nul = "\x00" if app.db.is_sqlite else "\ufffd"
    assert names == {"one@nul.example": f"Ann{nul}Eve", "two@nul.example": f"Bob{nul}",
                     "three@nul.example": "plain"}
