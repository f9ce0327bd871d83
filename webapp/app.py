"""The newsroom app's routes: sign in, the story list, the editor and the story page.

Pages are rendered on the server (Jinja2); static/app.js only polls the JSON endpoints and
updates the length estimate. Every POST carries the session's CSRF token; every page but the
sign-in form needs a signed-in editor. While the database holds no account at all, every page
leads to the first-run page, /setup, where the first editor's account is made.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storyreel.story import StoryError
from webapp import accounts, library, stories
from webapp.db import Image, Story, StoryImage, User, make_engine, migrate, utcnow
from webapp.settings import AppSettings

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["when"] = stories.when
# Room for the form fields next to the images of one request.
FORM_ALLOWANCE = 256 * 1024
LIBRARY_PAGE = 60


class NotSignedIn(Exception):
    pass


def create_app(settings: AppSettings | None = None) -> FastAPI:
    settings = settings or AppSettings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    migrate(engine)

    app = FastAPI(title="storyreel newsroom", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = sessionmaker(engine, expire_on_commit=False)
    app.state.has_accounts = False  # until an account is seen; there is no going back
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_routes(app)
    app.add_exception_handler(NotSignedIn, _not_signed_in)
    app.add_middleware(FirstRun)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, limit=settings.upload_limit + FORM_ALLOWANCE)
    app.add_middleware(
        SessionCookie, secret=settings.session_secret(), hours=settings.session_hours
    )
    return app


# --- middleware -----------------------------------------------------------------------------


class SessionCookie:
    """Signed, HttpOnly, SameSite=Lax session cookie; Secure when the request came over https
    (uvicorn sets the scheme from X-Forwarded-Proto of a trusted proxy)."""

    def __init__(self, app: ASGIApp, secret: str, hours: float) -> None:
        options = {"session_cookie": "storyreel_session", "max_age": int(hours * 3600)}
        self.plain = SessionMiddleware(app, secret, same_site="lax", **options)
        self.secure = SessionMiddleware(app, secret, same_site="lax", https_only=True, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chosen = self.secure if scope.get("scheme") in ("https", "wss") else self.plain
        await chosen(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes: by their Content-Length before reading, and
    while reading when the length was not declared."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, _too_large_text(self.limit))
            return message

        await self.app(scope, limited, send)


def _too_large_text(limit: int) -> str:
    return f"The upload is too large: at most {limit / 2**20:.1f} MB per save."


def _too_large(limit: int) -> Response:
    return Response(_too_large_text(limit), status_code=413, media_type="text/plain")


SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        b"form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Scripts, styles and media from this site only; no framing; no MIME sniffing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


SETUP_PATH = "/setup"


class FirstRun:
    """While the database holds no account, every request but the first-run page and the
    static files is sent to /setup. Once an account is seen the check stops for good."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _open_before_setup(scope["path"]):
            state = scope["app"].state
            if not state.has_accounts:
                state.has_accounts = await run_in_threadpool(any_account, state.sessions)
            if not state.has_accounts:
                await see_other(SETUP_PATH)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _open_before_setup(path: str) -> bool:
    return path == SETUP_PATH or path.startswith("/static/")


def any_account(sessions: sessionmaker) -> bool:
    with sessions() as db:
        return accounts.has_accounts(db)


async def _not_signed_in(request: Request, _exc: Exception) -> Response:
    if request.url.path.startswith(("/api/", "/library/")) or "/files/" in request.url.path:
        return JSONResponse({"detail": "sign in first"}, status_code=401)
    return RedirectResponse(f"/signin?next={quote(request.url.path)}", status_code=303)


# --- dependencies ---------------------------------------------------------------------------


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as db:
        yield db


def get_settings(request: Request) -> AppSettings:
    return request.app.state.settings


Db = Annotated[Session, Depends(get_db)]
Settings = Annotated[AppSettings, Depends(get_settings)]


def current_editor(request: Request, db: Db) -> User:
    user = accounts.signed_in_user(request, db)
    if user is None:
        raise NotSignedIn()
    return user


Editor = Annotated[User, Depends(current_editor)]


async def checked_csrf(request: Request) -> None:
    form = await request.form()
    if not accounts.csrf_matches(request, form.get("csrf_token")):
        raise HTTPException(
            403, "The form was not sent from this site, or has expired: reload the page."
        )


CSRF = [Depends(checked_csrf)]


def story_or_404(db: Session, story_id: str) -> Story:
    story = db.scalar(select(Story).where(Story.story_id == story_id))
    if story is None:
        raise HTTPException(404, f"there is no story {story_id!r}")
    return story


def page(request: Request, template: str, status_code: int = 200, /, **context: Any) -> Response:
    context.setdefault("user", None)
    flashes = request.session.pop("flash", []) if "flash" in request.session else []
    return templates.TemplateResponse(
        request,
        template,
        {"csrf": accounts.csrf_token(request), "flashes": flashes, **context},
        status_code=status_code,
    )


def flash(request: Request, message: str) -> None:
    request.session["flash"] = [*request.session.get("flash", []), message]


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# --- the editor's form ----------------------------------------------------------------------


@dataclass
class EditorForm:
    action: str
    story_id: str
    title: str
    text: str
    presenter: str
    voice: str
    rows: list[tuple[int, str, str]]  # (image id, caption, credit) in order
    remove: set[int]
    move_up: int | None
    add: list[int]
    uploads: list[UploadFile]


def editor_form(
    action: Annotated[str, Form()] = "save",
    new_id: Annotated[str, Form(alias="story_id")] = "",
    title: Annotated[str, Form()] = "",
    text: Annotated[str, Form()] = "",
    presenter: Annotated[str, Form()] = "",
    voice: Annotated[str, Form()] = "",
    row_image: Annotated[list[int] | None, Form()] = None,
    caption: Annotated[list[str] | None, Form()] = None,
    credit: Annotated[list[str] | None, Form()] = None,
    remove: Annotated[list[int] | None, Form()] = None,
    move_up: Annotated[int | None, Form()] = None,
    add: Annotated[list[int] | None, Form()] = None,
    upload: Annotated[list[UploadFile] | None, File()] = None,
) -> EditorForm:
    row_image, caption, credit = row_image or [], caption or [], credit or []
    if not len(row_image) == len(caption) == len(credit):
        raise HTTPException(400, "the image rows of the form are incomplete")
    return EditorForm(
        action=action,
        story_id=new_id.strip(),
        title=title.strip(),
        # Browsers send CRLF; paragraphs are separated by a blank line ("\n\n").
        text=text.replace("\r\n", "\n").strip(),
        presenter=presenter,
        voice=voice,
        rows=list(zip(row_image, caption, credit, strict=True)),
        remove=set(remove or []),
        move_up=move_up,
        add=add or [],
        uploads=[item for item in upload or [] if item.filename],
    )


def apply_form(
    db: Session, settings: AppSettings, story: Story, form: EditorForm, user: User
) -> stories.FieldErrors:
    """Copy the form into ``story`` (images uploaded into the library on the way); return the
    problems that kept a value from being taken."""
    errors: stories.FieldErrors = {}
    workflow = settings.workflow
    if story.submitted_digest is None:  # the id names the watcher's records once submitted
        wanted = form.story_id or stories.suggested_id(form.title)
        other = db.scalar(select(Story).where(Story.story_id == wanted, Story.id != story.id))
        if not stories.is_story_id(wanted):
            errors["id"] = [
                f"story id {wanted!r} is not valid: use 1-63 lower-case letters, digits or "
                "hyphens, starting with a letter or digit"
            ]
        elif other is not None:
            errors["id"] = [f"there is a story with the id {wanted!r} already"]
        else:
            story.story_id = wanted
    story.title, story.text = form.title, form.text
    if form.presenter in ("", *stories.presenter_choices(workflow)):
        story.presenter = form.presenter or None
    else:
        errors["presenter"] = [f"presenter {form.presenter!r} is not one of the choices"]
    voices = [value for value, _label in stories.voice_choices(workflow)]
    if form.voice in (*voices, story.voice or ""):
        story.voice = form.voice or None
    else:
        errors["voice"] = [f"voice {form.voice!r} is not one of the choices"]

    # Positions in the form are those of the page: move first, then drop the removed ones.
    ordered = list(enumerate(form.rows))
    moved = form.move_up
    if moved is not None and 0 < moved < len(ordered):
        ordered[moved - 1], ordered[moved] = ordered[moved], ordered[moved - 1]
    rows = [row for position, row in ordered if position not in form.remove]
    rows += [(image_id, "", "") for image_id in form.add]
    for upload in form.uploads:
        try:
            image = library.store_upload(db, settings, upload.filename, upload.file, user)
        except StoryError as err:
            errors.setdefault("images", []).append(str(err))
        else:
            rows.append((image.id, "", ""))
    images = {
        image.id: image
        for image in db.scalars(
            select(Image).where(Image.id.in_([image_id for image_id, _caption, _credit in rows]))
        )
    }
    story.images = [
        StoryImage(position=position, image=images[image_id], caption=caption, credit=credit)
        for position, (image_id, caption, credit) in enumerate(
            row for row in rows if row[0] in images
        )
    ]
    story.updated_at, story.updated_by = utcnow(), user.id
    return errors


def editor_page(
    request: Request,
    db: Session,
    settings: AppSettings,
    story: Story,
    user: User,
    errors: stories.FieldErrors | None = None,
    status_code: int = 200,
) -> Response:
    workflow = settings.workflow
    return page(
        request,
        "editor.html",
        status_code,
        user=user,
        story=story,
        errors=errors or {},
        library=db.scalars(select(Image).order_by(Image.id.desc()).limit(LIBRARY_PAGE)).all(),
        presenters=stories.presenter_choices(workflow),
        default_presenter=workflow["presenter"]["default"],
        voices=stories.voice_choices(workflow),
        estimate=stories.estimate_settings(workflow),
        seconds=stories.estimated_seconds(story.text or "", workflow),
        upload_limit=settings.upload_limit,
        progress=stories.progress(story, settings) if story.id else None,
    )


def save_story(
    request: Request,
    db: Session,
    settings: AppSettings,
    story: Story,
    form: EditorForm,
    user: User,
) -> Response:
    errors = apply_form(db, settings, story, form, user)
    if story.id is None and "id" in errors:
        db.expunge_all()  # a new story without a usable id is not stored; show the form again
        return editor_page(request, db, settings, story, user, errors, 422)
    db.add(story)
    db.commit()
    if errors:
        return editor_page(request, db, settings, story, user, errors, 422)
    if form.action == "publish":
        errors = stories.publish(db, settings, story)
        if errors:
            return editor_page(request, db, settings, story, user, errors, 422)
        flash(request, f"Story '{story.story_id}' was submitted for rendering.")
        return see_other(f"/stories/{story.story_id}")
    flash(request, "Draft saved.")
    if form.move_up is not None or form.remove:
        return see_other(f"/stories/{story.story_id}/edit#images")
    return see_other(f"/stories/{story.story_id}/edit")


# --- routes ---------------------------------------------------------------------------------


def _add_routes(app: FastAPI) -> None:
    @app.get("/")
    def home() -> Response:
        return see_other("/stories")

    @app.get(SETUP_PATH)
    def setup_form(request: Request, db: Db, settings: Settings) -> Response:
        if accounts.has_accounts(db):
            return see_other("/signin")
        return setup_page(request, settings)

    @app.post(SETUP_PATH, dependencies=CSRF)
    def setup(
        request: Request,
        db: Db,
        settings: Settings,
        name: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
        password_again: Annotated[str, Form()] = "",
        setup_token: Annotated[str, Form()] = "",
    ) -> Response:
        if accounts.has_accounts(db):
            raise HTTPException(404, "There is an account already: sign in at /signin.")
        name = name.strip()
        refusal = setup_refusal(request, settings, setup_token)
        if refusal:
            return setup_page(request, settings, 403, name=name, error=refusal)
        if password != password_again:
            error = "The two passwords differ."
            return setup_page(request, settings, 422, name=name, error=error)
        try:
            user = accounts.create_first_account(db, name, password)
        except accounts.AccountError as err:
            return setup_page(request, settings, 422, name=name, error=_sentence(str(err)))
        except accounts.SetupClosed:
            raise HTTPException(404, "There is an account already: sign in at /signin.") from None
        request.app.state.has_accounts = True
        log.info("first account %r created on the first-run page", user.name)
        accounts.sign_in(request, db, user, settings.session_hours)
        flash(request, f"Welcome, {user.name}: your account is ready. Write your first story.")
        return see_other("/stories")

    @app.get("/signin")
    def signin_form(request: Request, db: Db, next: str = "/stories") -> Response:
        if accounts.signed_in_user(request, db):
            return see_other(_local(next))
        return page(request, "signin.html", next=_local(next))

    @app.post("/signin", dependencies=CSRF)
    def signin(
        request: Request,
        db: Db,
        settings: Settings,
        name: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/stories",
    ) -> Response:
        user = accounts.check_password(db, name, password)
        if user is None:
            error = "Unknown name or wrong password."
            return page(request, "signin.html", 401, next=_local(next), name=name, error=error)
        accounts.sign_in(request, db, user, settings.session_hours)
        return see_other(_local(next))

    @app.post("/signout", dependencies=CSRF)
    def signout(request: Request, db: Db) -> Response:
        accounts.sign_out(request, db)
        return see_other("/signin")

    @app.get("/stories")
    def story_list(request: Request, db: Db, settings: Settings, user: Editor) -> Response:
        rows = [(story, stories.progress(story, settings)) for story in _all_stories(db)]
        return page(request, "list.html", user=user, rows=rows)

    @app.get("/api/stories")
    def story_list_json(db: Db, settings: Settings, _user: Editor) -> dict[str, Any]:
        entries = []
        for story in _all_stories(db):
            entry = stories.progress(story, settings).as_json()
            entries.append({"id": story.story_id, "title": story.title, **entry})
        return {"stories": entries}

    @app.get("/stories/new")
    def new_story(request: Request, db: Db, settings: Settings, user: Editor) -> Response:
        return editor_page(request, db, settings, Story(title="", text="", images=[]), user)

    @app.post("/stories/new", dependencies=CSRF)
    def create_story(
        request: Request,
        db: Db,
        settings: Settings,
        user: Editor,
        form: Annotated[EditorForm, Depends(editor_form)],
    ) -> Response:
        return save_story(request, db, settings, Story(images=[]), form, user)

    @app.get("/stories/{story_id}/edit")
    def edit_story(
        story_id: str, request: Request, db: Db, settings: Settings, user: Editor
    ) -> Response:
        return editor_page(request, db, settings, story_or_404(db, story_id), user)

    @app.post("/stories/{story_id}/edit", dependencies=CSRF)
    def update_story(
        story_id: str,
        request: Request,
        db: Db,
        settings: Settings,
        user: Editor,
        form: Annotated[EditorForm, Depends(editor_form)],
    ) -> Response:
        return save_story(request, db, settings, story_or_404(db, story_id), form, user)

    @app.get("/stories/{story_id}")
    def story_page(
        story_id: str, request: Request, db: Db, settings: Settings, user: Editor
    ) -> Response:
        story = story_or_404(db, story_id)
        progress = stories.progress(story, settings)
        record = progress.record
        vtt = stories.published_file(settings, record, "captions.vtt")
        return page(
            request,
            "story.html",
            user=user,
            story=story,
            progress=progress,
            location=stories.published_location(record),
            video=stories.published_file(settings, record, "final.mp4"),
            preview=stories.published_file(settings, record, "preview.png"),
            captions=vtt,
            cues=stories.caption_cues(vtt) if vtt else [],
            steps=(record or {}).get("steps") or {},
        )

    @app.get("/api/stories/{story_id}")
    def story_json(story_id: str, db: Db, settings: Settings, _user: Editor) -> dict[str, Any]:
        story = story_or_404(db, story_id)
        progress = stories.progress(story, settings)
        return {"id": story.story_id, "title": story.title, **progress.as_json()}

    @app.post("/stories/{story_id}/rerender", dependencies=CSRF)
    def rerender(
        story_id: str, request: Request, db: Db, settings: Settings, _user: Editor
    ) -> Response:
        story = story_or_404(db, story_id)
        progress = stories.progress(story, settings)
        if progress.state in stories.RENDERING and not progress.changed:
            flash(request, "The story is being rendered already.")
            return see_other(f"/stories/{story.story_id}")
        # Published and unchanged: the watcher takes the same story as done unless asked to
        # render it again. A failed one resumes from its finished steps; an edited one is a
        # new version and renders anyway.
        force = progress.state == "published" and not progress.changed
        errors = stories.publish(db, settings, story, force=force)
        for messages in errors.values():
            for message in messages:
                flash(request, f"Not submitted: {message}")
        if not errors:
            how = "from its first step" if force else "again"
            flash(request, f"Story '{story.story_id}' was submitted for rendering {how}.")
        return see_other(f"/stories/{story.story_id}")

    @app.get("/stories/{story_id}/files/{name}")
    def published_file(
        story_id: str, name: str, db: Db, settings: Settings, _user: Editor
    ) -> Response:
        story = story_or_404(db, story_id)
        record = stories.progress(story, settings).record
        path = stories.published_file(settings, record, name)
        if path is None:
            raise HTTPException(404, f"story {story_id!r} has no published {name}")
        return FileResponse(path, media_type=stories.PUBLISHED_FILES[name])

    @app.get("/library/{image_id}.jpg")
    def library_image(
        image_id: int, db: Db, settings: Settings, _user: Editor, size: str = "full"
    ) -> Response:
        image = db.get(Image, image_id)
        if image is None:
            raise HTTPException(404, "no such image")
        path = library.image_path(settings, image, thumbnail=size == "thumbnail")
        return FileResponse(path, media_type="image/jpeg")


def setup_refusal(request: Request, settings: AppSettings, token: str | None) -> str | None:
    """Why this request may not create the first account, or None if it may.

    Whoever reaches the page first gets the account: without a setup token it answers only
    this machine's own addresses; with one, the token is asked from every address."""
    if settings.setup_token is not None:
        if token is not None and hmac.compare_digest(
            token.strip().encode(), settings.setup_token.encode()
        ):
            return None
        return "The setup token is missing or wrong (STORYREEL_APP_SETUP_TOKEN where the app runs)."
    client = request.client.host if request.client else None
    if accounts.is_loopback(client):
        return None
    return (
        f"This browser is at {client or 'an unknown address'}: the first account can be "
        "created only from the machine the app runs on, or with the setup token "
        "(STORYREEL_APP_SETUP_TOKEN where the app runs)."
    )


def setup_page(
    request: Request, settings: AppSettings, status_code: int = 200, /, **context: Any
) -> Response:
    client = request.client.host if request.client else None
    token_asked = settings.setup_token is not None
    open_here = token_asked or accounts.is_loopback(client)
    return page(
        request,
        "setup.html",
        status_code if open_here else 403,
        token_asked=token_asked,
        open_here=open_here,
        client=client,
        min_password=accounts.MIN_PASSWORD_LENGTH,
        **context,
    )


def _sentence(message: str) -> str:
    """An error message of the accounts module as a sentence on a page."""
    message = message[:1].upper() + message[1:]
    return message if message.endswith(".") else f"{message}."


def _all_stories(db: Session) -> list[Story]:
    return list(db.scalars(select(Story).order_by(Story.updated_at.desc())))


def _local(target: str) -> str:
    """Only paths of this site: no open redirect after signing in."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/stories"
