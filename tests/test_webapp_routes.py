"""The newsroom app's routes through FastAPI's TestClient: the real app on a scratch SQLite
database, the real submit path into a watcher inbox, real status records, real media files."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import subprocess
import sys
import threading

import numpy as np
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import REPO
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session
from webapp_support import (  # noqa: F401 - the *_fixture names register fixtures
    EDITOR,
    PASSWORD,
    add_editor,
    app_settings_fixture,
    client_fixture,
    csrf_of,
    editor_fixture,
    local_client,
    png_bytes,
    story_form,
    write_published_files,
    write_watcher_config,
)

from cluster_manager.status import new_record, read_status, write_status
from storyreel.steps import init_story
from webapp import stories
from webapp.app import create_app
from webapp.db import Base, FirstAccount, Story, User, make_engine, migrate
from webapp.settings import AppSettings
from webapp.stories import digest

TALL_TITLE = "T" * 201


def stored_story(client, story_id: str) -> Story | None:
    with Session(client.app.state.engine) as db:
        return db.scalar(select(Story).where(Story.story_id == story_id))


def errors_next_to(page: str, field: str) -> list[str]:
    pattern = rf'<p class="error" data-error="{re.escape(field)}">([^<]*)</p>'
    return [html.unescape(message) for message in re.findall(pattern, page)]


def create_story(editor, tmp_path, **fields) -> None:
    answer = editor.post(
        "/stories/new",
        data=story_form(editor, **fields),
        files=[("upload", ("photo.png", png_bytes(tmp_path), "image/png"))],
    )
    assert answer.status_code == 303, answer.text


def publish(editor, story_id: str = "council", **fields):
    form = story_form(editor, f"/stories/{story_id}/edit", action="publish", **fields)
    page = editor.get(f"/stories/{story_id}/edit").text
    form["row_image"] = re.findall(r'name="row_image" value="(\d+)"', page)
    form["caption"] = ["The council chamber"] * len(form["row_image"])
    form["credit"] = ["Newsroom"] * len(form["row_image"])
    return editor.post(f"/stories/{story_id}/edit", data=form)


def accounts_in(app) -> list[str]:
    with Session(app.state.engine) as db:
        return list(db.scalars(select(User.name)))


def setup_form(client, **fields) -> dict:
    form = {
        "csrf_token": csrf_of(client, "/setup"),
        "name": "grace",
        "password": "a long enough password",
        "password_again": "a long enough password",
    }
    form.update(fields)
    return form


# --- the first run --------------------------------------------------------------------------


def test_every_page_leads_to_setup_while_there_is_no_account(client):
    for path in ("/", "/stories", "/signin", "/stories/new", "/stories/x", "/api/stories"):
        answer = client.get(path)
        assert (answer.status_code, answer.headers["location"]) == (303, "/setup"), path
    answer = client.post("/signin", data={"name": EDITOR, "password": PASSWORD})
    assert (answer.status_code, answer.headers["location"]) == (303, "/setup")
    assert client.get("/static/style.css").status_code == 200
    # An account made on the command line ends the first run as well.
    add_editor(client)
    assert client.get("/stories").headers["location"] == "/signin?next=/stories"
    assert client.get("/setup").headers["location"] == "/signin"
    late = {"csrf_token": csrf_of(client, "/signin"), "name": "x", "password": PASSWORD}
    assert client.post("/setup", data=late | {"password_again": PASSWORD}).status_code == 404
    assert accounts_in(client.app) == [EDITOR]


def test_the_first_account_is_made_on_the_setup_page(app_settings):
    with local_client(create_app(app_settings)) as browser:
        page = browser.get("/setup")
        assert page.status_code == 200
        assert "open\n  only to a browser on the machine the app runs on" in page.text
        assert 'name="password_again"' in page.text and 'name="setup_token"' not in page.text
        for fields, status, message in (
            ({"password_again": "another long password"}, 422, "The two passwords differ."),
            ({"password": "short", "password_again": "short"}, 422, "at least 10 characters."),
            ({"name": "no spaces"}, 422, "User name 'no spaces' is not valid"),
            ({"csrf_token": "forged"}, 403, "not sent from this site"),
        ):
            answer = browser.post("/setup", data=setup_form(browser, **fields))
            assert answer.status_code == status, answer.text
            assert message in html.unescape(answer.text)
        assert accounts_in(browser.app) == []

        answer = browser.post("/setup", data=setup_form(browser))
        assert (answer.status_code, answer.headers["location"]) == (303, "/stories")
        assert "Welcome, grace" in browser.get("/stories").text  # signed in at once
        assert accounts_in(browser.app) == ["grace"]
        # Gone: the form leads to signing in, and a late form is refused.
        assert browser.get("/setup").headers["location"] == "/signin"
        late = browser.post("/setup", data={"csrf_token": csrf_of(browser, "/stories")})
        assert late.status_code == 404
        assert accounts_in(browser.app) == ["grace"]
        # The password was stored hashed, and signs in like one made with adduser.
        browser.post("/signout", data={"csrf_token": csrf_of(browser, "/stories")})
        signed_in = browser.post(
            "/signin",
            data={
                "name": "grace",
                "password": "a long enough password",
                "csrf_token": csrf_of(browser, "/signin"),
            },
        )
        assert signed_in.status_code == 303
    with Session(make_engine(app_settings.db_url)) as db:
        stored = db.scalar(select(User.password_hash))
    assert stored.startswith("$argon2id$")


def test_setup_answers_only_this_machine_without_a_token(client):
    page = client.get("/setup")  # TestClient's address is "testclient", not a loopback one
    assert page.status_code == 403
    assert '<form method="post" action="/setup"' not in page.text
    assert "not on the\n  machine the app runs on" in page.text
    assert "STORYREEL_APP_SETUP_TOKEN" in page.text
    for host in ("10.0.0.7", "2001:db8::1"):
        # A valid form and session (fetched on this machine) do not help from elsewhere.
        with local_client(client.app) as near:
            form, cookies = setup_form(near), near.cookies
        with TestClient(client.app, follow_redirects=False, client=(host, 1)) as remote:
            remote.cookies = cookies
            answer = remote.post("/setup", data=form)
            assert answer.status_code == 403
            assert f"This browser is at {host}" in html.unescape(answer.text)
    for host in ("127.0.0.2", "::1", "::ffff:127.0.0.1"):
        with TestClient(client.app, follow_redirects=False, client=(host, 1)) as near:
            assert near.get("/setup").status_code == 200, host
    assert accounts_in(client.app) == []


def test_setup_with_a_token_asks_every_address_for_it(app_settings):
    settings = dataclasses.replace(app_settings, setup_token="a token only the admin knows")
    app = create_app(settings)
    with local_client(app) as near:
        assert 'name="setup_token"' in near.get("/setup").text
        # Asked of this machine too: behind a proxy on it every browser would look local.
        answer = near.post("/setup", data=setup_form(near))
        assert answer.status_code == 403 and "setup token is missing or wrong" in answer.text
    with TestClient(app, follow_redirects=False, client=("203.0.113.9", 1)) as remote:
        page = remote.get("/setup")
        assert page.status_code == 200 and "asks for\n  the setup token" in page.text
        wrong = remote.post("/setup", data=setup_form(remote, setup_token="a guess"))
        assert wrong.status_code == 403
        assert accounts_in(app) == []
        right = setup_form(remote, setup_token="a token only the admin knows")
        assert remote.post("/setup", data=right).status_code == 303
    assert accounts_in(app) == ["grace"]


def test_two_setup_forms_sent_at_once_make_one_account(app_settings):
    """Both forms pass the "no account yet" check before either stores its account (held at
    a barrier just before the insert); the database lets one of them through."""
    app = create_app(app_settings)
    barrier = threading.Barrier(2, timeout=30)

    def hold_account_inserts(_connection, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO USERS"):
            barrier.wait()

    event.listen(app.state.engine, "before_cursor_execute", hold_account_inserts)
    answers: dict[str, int] = {}
    with local_client(app) as first, local_client(app) as second:
        forms = {"grace": setup_form(first), "linus": setup_form(second, name="linus")}

        def send(browser, name) -> None:
            answers[name] = browser.post("/setup", data=forms[name]).status_code

        threads = [
            threading.Thread(target=send, args=(browser, name))
            for browser, name in ((first, "grace"), (second, "linus"))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert sorted(answers.values()) == [303, 404], answers
    (winner,) = [name for name, status in answers.items() if status == 303]
    assert accounts_in(app) == [winner]
    with Session(app.state.engine) as db:
        assert db.scalar(select(func.count()).select_from(FirstAccount)) == 1


# --- signing in -----------------------------------------------------------------------------


def test_pages_and_data_need_a_signed_in_editor(client, tmp_path):
    add_editor(client)
    for path in ("/stories", "/stories/new", "/stories/council", "/stories/council/edit"):
        answer = client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"] == f"/signin?next={path}"
    for path in (
        "/api/stories",
        "/api/stories/council",
        "/stories/council/files/final.mp4",
        "/library/1.jpg",
    ):
        assert client.get(path).status_code == 401, path
    # A valid anonymous CSRF token is not a sign-in: nothing is created or submitted.
    form = {"csrf_token": csrf_of(client, "/signin"), "story_id": "sneaky", "title": "x"}
    for path in ("/stories/new", "/stories/sneaky/edit", "/stories/sneaky/rerender"):
        answer = client.post(path, data=form)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/signin")
    assert stored_story(client, "sneaky") is None


def test_sign_in_sets_a_protected_cookie_and_sign_out_ends_the_session(client):
    add_editor(client)
    wrong = client.post(
        "/signin",
        data={"name": EDITOR, "password": "wrong", "csrf_token": csrf_of(client, "/signin")},
    )
    assert wrong.status_code == 401
    assert "Unknown name or wrong password." in wrong.text
    assert "frame-ancestors 'none'" in wrong.headers["content-security-policy"]
    assert wrong.headers["x-content-type-options"] == "nosniff"

    answer = client.post(
        "/signin",
        data={
            "name": EDITOR,
            "password": PASSWORD,
            "next": "/stories/new",
            "csrf_token": csrf_of(client, "/signin"),
        },
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/stories/new"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    signed_in_cookie = client.cookies["storyreel_session"]
    assert client.get("/stories").status_code == 200

    answer = client.post("/signout", data={"csrf_token": csrf_of(client, "/stories")})
    assert answer.status_code == 303 and answer.headers["location"] == "/signin"
    assert client.get("/stories").status_code == 303
    # The cookie as it was before signing out is dead too: the sign-in is gone on the server.
    client.cookies.set("storyreel_session", signed_in_cookie)
    assert client.get("/stories").status_code == 303


def test_the_cookie_is_secure_over_https(client):
    add_editor(client)
    token = csrf_of(client, "https://testserver/signin")
    answer = client.post(
        "https://testserver/signin",
        data={"name": EDITOR, "password": PASSWORD, "csrf_token": token},
    )
    assert answer.status_code == 303
    assert "; secure" in answer.headers["set-cookie"].lower()


def test_sign_in_only_redirects_within_the_site(client):
    add_editor(client)
    answer = client.post(
        "/signin",
        data={
            "name": EDITOR,
            "password": PASSWORD,
            "next": "//elsewhere.example/x",
            "csrf_token": csrf_of(client, "/signin"),
        },
    )
    assert answer.headers["location"] == "/stories"


def test_every_form_needs_the_session_csrf_token(editor, client, tmp_path):
    assert client.post("/signout", data={}).status_code == 403
    assert client.post("/signout", data={"csrf_token": "forged"}).status_code == 403
    form = story_form(editor, csrf_token="forged")
    answer = editor.post("/stories/new", data=form)
    assert answer.status_code == 403
    assert stored_story(editor, "council") is None
    # A token of another session does not count either.
    other = type(editor)(editor.app, follow_redirects=False)
    foreign_token = csrf_of(other, "/signin")
    answer = editor.post("/stories/new", data=story_form(editor, csrf_token=foreign_token))
    assert answer.status_code == 403
    assert editor.get("/stories").status_code == 200  # still signed in


def test_adduser_command_creates_an_account_with_a_hashed_password(tmp_path, app_settings):
    command = [sys.executable, "-m", "webapp", "--data-dir", str(app_settings.data_dir)]
    command += ["--watcher-config", str(app_settings.watcher_config), "adduser", "grace"]
    short = subprocess.run(
        [*command, "--password-stdin"], input="short\n", capture_output=True, text=True, cwd=REPO
    )
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    made = subprocess.run(
        [*command, "--password-stdin"],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert made.returncode == 0, made.stderr
    again = subprocess.run(
        [*command, "--password-stdin"], input="another password\n", capture_output=True, text=True
    )
    assert again.returncode == 1 and "exists already" in again.stderr
    engine = make_engine(app_settings.db_url)
    with engine.connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT password_hash FROM users WHERE name = 'grace'"
        ).scalar_one()
    assert stored.startswith("$argon2id$") and "a long enough password" not in stored


def test_migrations_build_the_schema_the_models_describe(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    migrate(engine)
    migrate(engine)  # at start-up every time: a second run changes nothing
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


# --- writing a story ------------------------------------------------------------------------


def test_a_draft_is_saved_with_its_uploaded_image(editor, tmp_path):
    create_story(editor, tmp_path)
    story = stored_story(editor, "council")
    assert story.title == "Council approves budget" and story.submitted_digest is None
    page = editor.get("/stories/council/edit")
    assert page.status_code == 200
    assert 'value="Council approves budget"' in page.text
    assert "Draft saved." in page.text
    (image_id,) = re.findall(r'name="row_image" value="(\d+)"', page.text)
    # 8 words at the config's rate plus the intro and outro cards: about 7 s.
    assert "Video about 7 s" in page.text
    thumbnail = editor.get(f"/library/{image_id}.jpg?size=thumbnail")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert thumbnail.content.startswith(b"\xff\xd8")  # stored as a JPEG whatever was sent
    listing = editor.get("/api/stories").json()["stories"]
    assert listing == [
        {
            "id": "council",
            "title": "Council approves budget",
            "state": "draft",
            "label": "draft",
            "changed": False,
            "updated": listing[0]["updated"],
        }
    ]
    assert "Council approves budget" in editor.get("/stories").text


def test_images_can_be_picked_from_the_library_captioned_reordered_and_removed(editor, tmp_path):
    create_story(editor, tmp_path)
    create_story(editor, tmp_path, story_id="bridge", title="Bridge works start")
    # A second, different image in the library, uploaded with the bridge story.
    other = png_bytes(tmp_path, color=(200, 30, 30), name="red.png")
    form = story_form(editor, "/stories/bridge/edit", story_id="bridge", title="Bridge")
    page = editor.get("/stories/bridge/edit").text
    form["row_image"] = re.findall(r'name="row_image" value="(\d+)"', page)
    form["caption"], form["credit"] = ["first"], ["A"]
    answer = editor.post(
        "/stories/bridge/edit", data=form, files=[("upload", ("red.png", other, "image/png"))]
    )
    assert answer.status_code == 303
    library = re.findall(r'name="add" value="(\d+)"', editor.get("/stories/council/edit").text)
    assert len(library) == 2  # the identical photo.png of both stories is stored once

    form = story_form(editor, "/stories/council/edit")
    page = editor.get("/stories/council/edit").text
    rows = re.findall(r'name="row_image" value="(\d+)"', page)
    picked = [image for image in library if image not in rows]
    form.update(row_image=rows, caption=["chamber"], credit=["Jo"], add=picked)
    assert editor.post("/stories/council/edit", data=form).status_code == 303
    story = stored_story(editor, "council")
    with Session(editor.app.state.engine) as db:
        story = db.get(Story, story.id)
        assert [entry.caption for entry in story.images] == ["chamber", ""]
        order = [entry.image_id for entry in story.images]

    form = story_form(editor, "/stories/council/edit")
    form.update(
        row_image=[str(image) for image in order],
        caption=["chamber", "red"],
        credit=["Jo", ""],
        move_up="1",
    )
    assert editor.post("/stories/council/edit", data=form).status_code == 303
    with Session(editor.app.state.engine) as db:
        story = db.get(Story, story.id)
        assert [entry.image_id for entry in story.images] == order[::-1]
        assert [entry.caption for entry in story.images] == ["red", "chamber"]

    form = story_form(editor, "/stories/council/edit")
    form.update(
        row_image=[str(image) for image in order[::-1]],
        caption=["red", "chamber"],
        credit=["", "Jo"],
        remove="0",
    )
    assert editor.post("/stories/council/edit", data=form).status_code == 303
    with Session(editor.app.state.engine) as db:
        story = db.get(Story, story.id)
        assert [entry.caption for entry in story.images] == ["chamber"]


def test_an_oversized_upload_is_refused_before_it_is_stored(editor, tmp_path, app_settings):
    noise = tmp_path / "noise.png"
    pixels = np.random.default_rng(1).integers(0, 255, (500, 500, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(noise)  # ~750 KB: over the test's 400 KB limit
    assert noise.stat().st_size > app_settings.upload_limit
    answer = editor.post(
        "/stories/new",
        data=story_form(editor),
        files=[("upload", ("noise.png", noise.read_bytes(), "image/png"))],
    )
    assert answer.status_code == 413
    assert "too large" in answer.text
    # Sent in chunks without a declared length, it is cut off while it arrives.
    token = csrf_of(editor, "/stories/new")
    body = (
        b'--cut\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
        + token.encode()
        + b'\r\n--cut\r\nContent-Disposition: form-data; name="upload"; filename="noise.png"'
        b"\r\nContent-Type: image/png\r\n\r\n" + noise.read_bytes() + b"\r\n--cut--\r\n"
    )
    chunks = (body[start : start + 65536] for start in range(0, len(body), 65536))
    answer = editor.post(
        "/stories/new",
        content=chunks,
        headers={"Content-Type": "multipart/form-data; boundary=cut"},
    )
    assert answer.status_code == 413
    assert "too large" in answer.text
    assert stored_story(editor, "council") is None
    assert not list(app_settings.images_dir.glob("*.jpg"))


def test_a_file_that_is_not_an_image_is_refused_next_to_the_images(editor, app_settings):
    answer = editor.post(
        "/stories/new",
        data=story_form(editor),
        files=[("upload", ("notes.png", b"this is text, not a picture", "image/png"))],
    )
    assert answer.status_code == 422
    (message,) = errors_next_to(answer.text, "images")
    assert message == "upload notes.png: file notes.png is not an image"
    assert not list(app_settings.images_dir.glob("*.jpg"))
    # The rest of the form was kept: the draft exists, without an image.
    assert stored_story(editor, "council").title == "Council approves budget"


def test_a_tiny_image_is_refused_with_the_workflow_limit(editor, tmp_path):
    answer = editor.post(
        "/stories/new",
        data=story_form(editor),
        files=[("upload", ("icon.png", png_bytes(tmp_path, size=(32, 32)), "image/png"))],
    )
    assert answer.status_code == 422
    (message,) = errors_next_to(answer.text, "images")
    assert "only 32 x 32 pixels; at least 64 pixels on each side are needed" in message


def test_an_invalid_story_id_keeps_a_new_story_from_being_stored(editor):
    answer = editor.post("/stories/new", data=story_form(editor, story_id="Bad Id"))
    assert answer.status_code == 422
    (message,) = errors_next_to(answer.text, "id")
    assert "'Bad Id' is not valid" in message
    assert 'value="Council approves budget"' in answer.text  # the form comes back filled in
    with Session(editor.app.state.engine) as db:
        assert db.scalars(select(Story)).all() == []


def test_publishing_an_invalid_story_shows_each_error_next_to_its_field(editor, tmp_path):
    create_story(editor, tmp_path)
    answer = publish(editor, title=TALL_TITLE, text="   ")
    assert answer.status_code == 422
    assert errors_next_to(answer.text, "title") == [
        "field 'title' is 201 characters long; the limit is 200"
    ]
    assert errors_next_to(answer.text, "text") == ["field 'text' is empty"]
    assert stored_story(editor, "council").submitted_digest is None
    inbox = editor.app.state.settings.watcher.inbox
    assert not inbox.exists() or not list(inbox.iterdir())


def test_publishing_without_an_image_names_the_images_field(editor):
    assert editor.post("/stories/new", data=story_form(editor)).status_code == 303
    answer = publish(editor)
    assert answer.status_code == 422
    assert errors_next_to(answer.text, "images") == ["field 'images' is empty: at least 1 needed"]


# --- publishing and rendering ---------------------------------------------------------------


def submitted(editor, story_id: str = "council") -> bytes:
    return (editor.app.state.settings.watcher.inbox / f"{story_id}.json").read_bytes()


def set_status(editor, state: str, story_id: str = "council", **fields) -> None:
    config = editor.app.state.settings.watcher
    data_digest = read_status(config, story_id)["digest"]
    write_status(config, new_record(story_id, state, data_digest, **fields))


def test_publishing_submits_a_story_that_init_story_can_read(editor, tmp_path):
    create_story(editor, tmp_path)
    answer = publish(editor)
    assert answer.status_code == 303 and answer.headers["location"] == "/stories/council"
    data = submitted(editor)
    story = json.loads(data)
    assert story["id"] == "council" and story["title"] == "Council approves budget"
    assert story["images"][0]["caption"] == "The council chamber"
    assert story["images"][0]["credit"] == "Newsroom"
    config = editor.app.state.settings.watcher
    record = read_status(config, "council")
    assert record["state"] == "queued" and record["digest"] == digest(data)
    assert stored_story(editor, "council").submitted_digest == digest(data)

    # The workflow's own intake accepts it: the image is read from the app's library.
    work = tmp_path / "init"
    workflow = editor.app.state.settings.workflow
    init_story(
        source=str(config.inbox / "council.json"),
        story_json=str(work / "story.json"),
        assets=str(work / "assets"),
        story="council",
        limits=workflow["limits"],
        assets_config=workflow["assets"],
    )
    assert (work / "assets" / "image-00.jpg").stat().st_size > 0

    listing = editor.get("/api/stories").json()["stories"]
    assert [(entry["state"], entry["label"]) for entry in listing] == [("queued", "queued")]
    page = editor.get("/stories/council")
    assert "was submitted for rendering" in page.text
    assert 'data-state="queued"' in page.text
    assert re.search(r'id="story_id"[^>]*readonly', editor.get("/stories/council/edit").text)


def test_the_list_shows_each_state_of_the_status_record(editor, tmp_path):
    create_story(editor, tmp_path)
    publish(editor)
    set_status(editor, "running", step="tts")
    (entry,) = editor.get("/api/stories").json()["stories"]
    assert (entry["state"], entry["label"]) == ("running", "rendering, step tts")
    set_status(editor, "failed", reason="init_story: images[0] is not an image")
    (entry,) = editor.get("/api/stories").json()["stories"]
    assert entry["label"] == "failed: init_story: images[0] is not an image"
    page = editor.get("/stories").text
    assert "failed: init_story: images[0] is not an image" in html.unescape(page)
    assert editor.get("/api/stories/council").json()["state"] == "failed"


def test_render_again_asks_the_watcher_to_render_a_published_story_again(editor, tmp_path):
    create_story(editor, tmp_path)
    publish(editor)
    config = editor.app.state.settings.watcher
    inbox_file = config.inbox / "council.json"
    inbox_file.unlink()  # as if the watcher had taken it
    token = csrf_of(editor, "/stories/council")

    answer = editor.post("/stories/council/rerender", data={"csrf_token": token})
    assert answer.status_code == 303
    assert "being rendered already" in editor.get("/stories/council").text
    assert not inbox_file.exists()

    # Failed: submitted as it is, to resume from its finished steps.
    set_status(editor, "failed", reason="render: out of memory")
    editor.post("/stories/council/rerender", data={"csrf_token": token})
    assert inbox_file.exists()
    record = read_status(config, "council")
    assert (record["state"], record["render_again"]) == ("queued", False)
    assert "submitted for rendering again" in editor.get("/stories/council").text
    inbox_file.unlink()

    # Published and unchanged: the watcher is asked to render it again from its first step.
    set_status(editor, "published", uri="published/council/final.mp4", attempts=1)
    page = editor.get("/stories/council").text
    assert re.search(r'<button type="submit" >Render again</button>', page)
    assert editor.post("/stories/council/rerender", data={}).status_code == 403  # no CSRF token
    assert not inbox_file.exists()
    answer = editor.post("/stories/council/rerender", data={"csrf_token": token})
    assert answer.status_code == 303 and answer.headers["location"] == "/stories/council"
    # The same bytes as published: only the status record tells the watcher to render them.
    assert digest(inbox_file.read_bytes()) == stored_story(editor, "council").submitted_digest
    record = read_status(config, "council")
    assert (record["state"], record["render_again"], record["attempts"]) == ("queued", True, 0)
    page = editor.get("/stories/council").text
    assert "submitted for rendering from its first step" in page
    # The page follows the story through queued, rendering and published again.
    assert 'data-state="queued"' in page and ">queued to render again</span>" in page
    assert re.search(r'<button type="submit" disabled>Render again</button>', page)
    set_status(editor, "running", step="tts", attempts=1, render_again=True)
    assert editor.get("/api/stories/council").json()["label"] == "rendering again, step tts"
    set_status(editor, "published", uri="published/council/final.mp4", attempts=1)
    assert editor.get("/api/stories/council").json()["label"] == "published"

    # The page saw it published, but a render started meanwhile: refused with the reason.
    inbox_file.unlink()
    write_status(config, {**read_status(config, "council"), "state": "running", "step": "tts"})
    settings = editor.app.state.settings
    with Session(editor.app.state.engine) as db:
        story = db.get(Story, stored_story(editor, "council").id)
        assert stories.publish(db, settings, story, force=True) == {
            "form": [
                "story 'council' is being rendered now (step tts): ask for it to be rendered "
                "again once that run has ended"
            ]
        }
    assert not inbox_file.exists()

    # An edit saved as a draft makes it a new version: that one is rendered without asking.
    set_status(editor, "published", uri="published/council/final.mp4", attempts=1)
    page = editor.get("/stories/council/edit").text
    form = story_form(editor, "/stories/council/edit", title="Council approves a new budget")
    form["row_image"] = re.findall(r'name="row_image" value="(\d+)"', page)
    form["caption"], form["credit"] = ["The council chamber"], ["Newsroom"]
    assert editor.post("/stories/council/edit", data=form).status_code == 303
    assert editor.get("/api/stories/council").json()["changed"] is True
    editor.post("/stories/council/rerender", data={"csrf_token": token})
    assert json.loads(inbox_file.read_bytes())["title"] == "Council approves a new budget"
    assert read_status(config, "council")["render_again"] is False
    assert editor.get("/api/stories/council").json() | {"updated": None} == {
        "id": "council",
        "title": "Council approves a new budget",
        "state": "queued",
        "label": "queued",
        "changed": False,
        "updated": None,
    }


def test_the_story_page_plays_the_published_video_with_captions_and_step_times(editor, tmp_path):
    create_story(editor, tmp_path)
    publish(editor)
    work = editor.app.state.settings.watcher.workdir
    video = write_published_files(work / "published" / "council")
    steps = {"init_story": 0.4, "tts": 6.1, "align": 1.7, "compose": 9.25}
    set_status(editor, "published", uri="published/council/final.mp4", steps=steps)

    page = editor.get("/stories/council")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert (
        '<video id="video" controls preload="metadata" src="/stories/council/files/final.mp4">'
        in text
    )
    assert re.search(r'<track kind="captions"[^>]*src="/stories/council/files/captions.vtt"', text)
    assert "approved a budget & more." in text
    assert re.search(r"<td>tts</td><td class=\"number\">6.1</td>", text)
    assert re.search(r"<th>Total</th><th class=\"number\">17.4</th>", text)
    assert 'src="/stories/council/files/preview.png"' in text
    assert "published" in editor.get("/api/stories/council").json()["label"]

    whole = editor.get("/stories/council/files/final.mp4")
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.content == video.read_bytes()
    part = editor.get("/stories/council/files/final.mp4", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == video.read_bytes()[:100]
    captions = editor.get("/stories/council/files/captions.vtt")
    assert captions.headers["content-type"].startswith("text/vtt")
    for name in ("status.json", "..%2Fstatus.json", "final.mp4.tmp"):
        assert editor.get(f"/stories/council/files/{name}").status_code == 404


def test_a_video_published_to_gcs_is_named_not_played(editor, tmp_path):
    create_story(editor, tmp_path)
    publish(editor)
    set_status(editor, "published", uri="gs://newsroom-videos/videos/council/final.mp4")
    page = editor.get("/stories/council").text
    assert "gs://newsroom-videos/videos/council/final.mp4" in page
    assert "<video" not in page
    assert editor.get("/stories/council/files/final.mp4").status_code == 404


def test_an_unknown_story_is_not_found(editor):
    assert editor.get("/stories/nothing-here").status_code == 404
    assert editor.get("/stories/nothing-here/edit").status_code == 404


def test_publishing_to_a_gcs_story_source_is_refused_with_the_reason(tmp_path):
    settings = AppSettings(
        data_dir=tmp_path / "data",
        watcher_config=write_watcher_config(tmp_path, story_source="gs://inbox/{story}.json"),
        secret_key="a test secret that is long enough",
    )
    with TestClient(create_app(settings), follow_redirects=False) as client:
        add_editor(client)
        token = csrf_of(client, "/signin")
        client.post("/signin", data={"name": EDITOR, "password": PASSWORD, "csrf_token": token})
        create_story(client, tmp_path)
        answer = publish(client)
    assert answer.status_code == 422
    (message,) = errors_next_to(answer.text, "form")
    assert "publishing to a GCS story source is not supported" in message
