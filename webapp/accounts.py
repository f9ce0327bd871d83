"""Editors' accounts, signing in and out, and the per-session CSRF token.

The session cookie is signed (itsdangerous, through Starlette's SessionMiddleware) and holds the
CSRF token and a random sign-in token; the database holds the sign-in token's hash, so signing
out, or deleting an account, ends the session on the server too.

The first account is made either on the command line (``python -m webapp adduser``) or on the
first-run page while the database holds none (:func:`create_first_account`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from datetime import timedelta
from functools import cache
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from webapp.db import FirstAccount, SignIn, User, utcnow

if TYPE_CHECKING:
    from starlette.requests import Request

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MIN_PASSWORD_LENGTH = 10
_hasher = PasswordHasher()


@cache
def _unknown_user_hash() -> str:
    """Verified when the name is unknown, so a wrong name takes as long as a wrong password."""
    return _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    pass


class SetupClosed(Exception):
    """An account exists already: the first-run page is gone."""


def check_new_account(name: str, password: str) -> None:
    """The rules for a new account's name and password (the same everywhere)."""
    if not USER_NAME.fullmatch(name):
        raise AccountError(
            f"user name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-'"
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")


def add_user(db: Session, name: str, password: str) -> User:
    check_new_account(name, password)
    if db.scalar(select(User).where(User.name == name)):
        raise AccountError(f"user {name!r} exists already")
    user = User(name=name, password_hash=_hasher.hash(password))
    db.add(user)
    db.commit()
    return user


def has_accounts(db: Session) -> bool:
    return db.scalar(select(User.id).limit(1)) is not None


def create_first_account(db: Session, name: str, password: str) -> User:
    """The first editor's account, made only while the database holds none.

    Raises AccountError for a bad name or password, SetupClosed if an account exists. Two of
    these at once store one account: the FirstAccount row has a fixed key, so the second
    transaction fails on it (or, in SQLite, on the write lock) and is rolled back.
    """
    check_new_account(name, password)
    password_hash = _hasher.hash(password)  # slow: before the transaction, not inside it
    try:
        if has_accounts(db):
            raise SetupClosed()
        user = User(name=name, password_hash=password_hash)
        db.add(user)
        db.flush()
        db.add(FirstAccount(id=1, user_id=user.id))
        db.commit()
    except (IntegrityError, OperationalError):
        db.rollback()
        if has_accounts(db):
            raise SetupClosed() from None
        raise
    return user


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine's own (127.0.0.0/8, ::1, ::ffff:127.x)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def check_password(db: Session, name: str, password: str) -> User | None:
    user = db.scalar(select(User).where(User.name == name))
    try:
        _hasher.verify(user.password_hash if user else _unknown_user_hash(), password)
    except (VerifyMismatchError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
        db.commit()
    return user


def sign_in(request: Request, db: Session, user: User, hours: float) -> None:
    """Start a fresh session for ``user``: new sign-in token, new CSRF token."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    db.execute(delete(SignIn).where(SignIn.expires_at < now))
    db.add(SignIn(token_hash=_digest(token), user=user, expires_at=now + timedelta(hours=hours)))
    db.commit()
    request.session.clear()
    request.session.update(sign_in=token, csrf=secrets.token_urlsafe(32))


def sign_out(request: Request, db: Session) -> None:
    token = request.session.get("sign_in")
    if token:
        db.execute(delete(SignIn).where(SignIn.token_hash == _digest(token)))
        db.commit()
    request.session.clear()


def signed_in_user(request: Request, db: Session) -> User | None:
    token = request.session.get("sign_in")
    if not isinstance(token, str):
        return None
    sign_in_row = db.get(SignIn, _digest(token))
    if sign_in_row is None or sign_in_row.expires_at < utcnow():
        return None
    return sign_in_row.user


def csrf_token(request: Request) -> str:
    """This session's CSRF token (anonymous sessions get one too: the sign-in form needs it)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_matches(request: Request, sent: object) -> bool:
    expected = request.session.get("csrf")
    return (
        isinstance(expected, str)
        and isinstance(sent, str)
        and hmac.compare_digest(expected.encode(), sent.encode())
    )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
