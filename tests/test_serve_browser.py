"""The web page in a real browser: pick a photo, see the top classes as bars with percentages."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")
CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package; see `make browser`)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from floranet import serving as serve  # noqa: E402
from floranet.data.datasets import mini_flowers_path  # noqa: E402

ROSES = mini_flowers_path() / "roses"


@contextlib.contextmanager
def _browser(app: Any) -> Iterator[tuple[str, Any]]:
    """``app`` served on loopback, and a headless Chromium: (the app's URL, the browser)."""
    with serve.serve_in_thread(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield url, browser
        finally:
            browser.close()


def test_page_classifies_an_uploaded_rose(tiny_run, artifacts_dir, tmp_path) -> None:
    photo = tmp_path / "rose.jpg"
    shutil.copy(sorted(ROSES.glob("*.jpg"))[0], photo)
    app = serve.create_app(tiny_run)
    requests: list[str] = []
    with _browser(app) as (url, browser):
        page = browser.new_page(viewport={"width": 1000, "height": 720})
        page.on("request", lambda r: requests.append(r.url))
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.goto(url + "/")
        expect = sync_api.expect  # its waits run in Playwright's own world: the page's CSP forbids eval
        expect(page.locator("#version")).to_have_text(re.compile(r"^model \S+"), timeout=15_000)
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#results li .cls", timeout=30_000)
        rows = page.locator("#results li")
        assert rows.count() == 3
        first = rows.first.inner_text()
        assert re.search(r"(daisy|roses|tulips)\s+\d{1,3}\.\d%", first), first
        assert {rows.nth(i).locator(".cls").inner_text() for i in range(3)} == {"daisy", "roses", "tulips"}
        assert page.locator("#photo").is_visible()
        page.wait_for_timeout(400)  # let the bars finish growing for the screenshot
        page.check("#gradcam")
        expect(page.locator("#photo")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"), timeout=30_000)
        page.screenshot(path=str(artifacts_dir / "serve.png"), full_page=True)
        assert not console_errors, console_errors  # e.g. a Content-Security-Policy violation
    assert (artifacts_dir / "serve.png").stat().st_size > 5_000
    host = urlparse(url).netloc
    outside = [u for u in requests if not u.startswith(("blob:", "data:")) and urlparse(u).netloc != host]
    assert not outside, f"requests left 127.0.0.1: {outside}"
    assert any(u.endswith("/predict") for u in requests) and any("gradcam=1" in u for u in requests)


def test_page_with_an_api_key_from_its_link_or_typed_in(tiny_run, tmp_path) -> None:
    photo = tmp_path / "rose.jpg"
    shutil.copy(sorted(ROSES.glob("*.jpg"))[0], photo)
    key = "browser+test/key=0123456789"  # base64's "+", "/" and "=" survive the link
    app = serve.create_app(tiny_run, api_key=key)
    with _browser(app) as (url, browser):
        page = browser.new_page()
        # The fragment is never sent; the page keeps the key for the tab.
        page.goto(url + "/#key=" + key.replace("/", "%2F"))
        assert "#" not in page.url  # and removes it from the address bar
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#results li .cls", timeout=30_000)
        fresh = browser.new_page()  # another tab: no key yet, so the server's 401 makes the page ask
        fresh.goto(url + "/")
        fresh.set_input_files("#file", str(photo))
        sync_api.expect(fresh.locator("#key")).to_be_visible(timeout=30_000)
        # A key that no header can carry (a curly quote pasted from a document): fetch threw before sending,
        # the page said "could not be reached", and the box never came back, even after a reload.
        fresh.fill("#key-input", "browser\u2019test-key-0123456789")
        fresh.press("#key-input", "Enter")
        sync_api.expect(fresh.locator("#error")).to_contain_text("printable ASCII", timeout=10_000)
        assert fresh.locator("#key").is_visible()
        fresh.fill("#key-input", key)
        fresh.press("#key-input", "Enter")  # the box is a form: Enter uses the key
        fresh.wait_for_selector("#results li .cls", timeout=30_000)


def test_page_greys_every_bar_of_an_unknown_answer_and_refuses_a_non_answer(tiny_run, tmp_path) -> None:
    """The first bar kept its green on an unknown answer (a more specific CSS rule won), and a 200 that was not
    JSON (a proxy's page) was shown as "the server could not be reached: answer.top_k is not iterable"."""
    import json

    photo = tmp_path / "rose.jpg"
    shutil.copy(sorted(ROSES.glob("*.jpg"))[0], photo)
    top = [{"class": c, "probability": p} for c, p in (("roses", 0.6), ("daisy", 0.3), ("tulips", 0.1))]
    answer = {"file": "rose.jpg", "top_k": top, "unknown": True, "ood_score": 9.5, "low_confidence": False}
    replies = [
        {"status": 200, "content_type": "application/json", "body": json.dumps(answer)},
        {"status": 200, "content_type": "text/html", "body": "<html>proxy login</html>"},
    ]
    with _browser(serve.create_app(tiny_run)) as (url, browser):
        page = browser.new_page()
        page.route("**/predict*", lambda route: route.fulfill(**replies.pop(0)))
        page.goto(url + "/")
        page.set_input_files("#file", str(photo))
        sync_api.expect(page.locator("#warn")).to_contain_text("Unknown", timeout=15_000)
        colours = page.locator("#results .fill").evaluate_all(
            "els => els.map(e => getComputedStyle(e).backgroundColor)"
        )
        assert colours == ["rgb(115, 124, 119)"] * 3, colours  # #737c77: 3.6:1 on the track
        shutil.copy(photo, tmp_path / "rose2.jpg")  # another file: picking the same one again changes nothing
        page.set_input_files("#file", str(tmp_path / "rose2.jpg"))
        sync_api.expect(page.locator("#error")).to_have_text("HTTP 200: not an answer from floranet")
        assert page.locator("#results li").count() == 0


def test_the_upload_control_is_a_named_button_that_the_keyboard_opens(tiny_run) -> None:
    """The drop zone was a focusable label with no role: a screen reader announced no control at all."""
    with _browser(serve.create_app(tiny_run)) as (url, browser):
        page = browser.new_page()
        # Intercepting file choosers from the start: expect_file_chooser turns it on late, racing the key.
        page.on("filechooser", lambda chooser: None)
        page.goto(url + "/")
        assert '- button "Drop a photo here or click to choose one"' in page.locator("main").aria_snapshot()
        control = page.get_by_role("button", name="Drop a photo here or click to choose one")
        page.keyboard.press("Tab")  # the first stop on the page
        sync_api.expect(control).to_be_focused()
        for key in ("Enter", " "):
            with page.expect_file_chooser(timeout=5_000) as chooser:
                page.keyboard.press(key)
            assert not chooser.value.is_multiple()


def test_long_class_and_file_names_wrap_inside_their_cards(writable_run, tmp_path) -> None:
    """A name with no break opportunity (PlantVillage's Tomato___Tomato_Yellow_Leaf_Curl_Virus) pushed its
    percentage off the card, and on a phone made the page scroll sideways (468 px wide at 390)."""
    import json

    names = ["daisy", "Tomato___Tomato_Yellow_Leaf_Curl_Virus" * 8, "tulips"]
    (writable_run / "class_names.json").write_text(json.dumps(names))
    photo = tmp_path / ("a_very_long_upload_name_" * 8 + ".jpg")
    shutil.copy(sorted(ROSES.glob("*.jpg"))[0], photo)
    app = serve.create_app(writable_run, runtime="tensorflow", precision="fp32")
    with _browser(app) as (url, browser):
        for width in (390, 1000):
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.goto(url + "/")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#results li .cls", timeout=30_000)
            sync_api.expect(page.locator("#meta")).to_contain_text("ms", timeout=30_000)
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            card = page.locator("#results").bounding_box()
            for i in range(3):
                pct = page.locator("#results li .pct").nth(i).bounding_box()
                assert card and pct and pct["x"] + pct["width"] <= card["x"] + card["width"] + 0.5, (width, i)
            page.close()


def test_page_spells_out_control_and_bidi_characters_of_server_text(tiny_run, tmp_path) -> None:
    """A class named "abc\u202egpj.exe" showed as "abcexe.jpg" (the override reversed the rest): the page now
    shows class names, the file name and errors as report.html does, the override spelled out."""
    import json

    photo = tmp_path / "rose.jpg"
    shutil.copy(sorted(ROSES.glob("*.jpg"))[0], photo)
    top = [{"class": "abc\u202egpj.exe", "probability": 0.9}, {"class": "tab\there", "probability": 0.1}]
    answer = {"file": "x\u2066y.jpg", "top_k": top, "unknown": False, "low_confidence": False}
    replies = [
        {"status": 200, "content_type": "application/json", "body": json.dumps(answer)},
        {"status": 422, "content_type": "application/json", "body": json.dumps({"error": "bad 'a\u202eb.jpg'"})},
    ]
    with _browser(serve.create_app(tiny_run)) as (url, browser):
        page = browser.new_page()
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.route("**/predict*", lambda route: route.fulfill(**replies.pop(0)))
        page.goto(url + "/")
        page.set_input_files("#file", str(photo))
        sync_api.expect(page.locator("#meta")).to_contain_text("ms", timeout=15_000)
        names = page.locator("#results .cls").all_inner_texts()
        assert names == ["abc\\u202egpj.exe", "tab\\x09here"], names
        assert page.locator("#meta").inner_text().startswith("x\\u2066y.jpg \u00b7 ")
        shutil.copy(photo, tmp_path / "rose2.jpg")
        page.set_input_files("#file", str(tmp_path / "rose2.jpg"))
        sync_api.expect(page.locator("#error")).to_have_text("bad 'a\\u202eb.jpg'", timeout=15_000)
        assert not [e for e in console_errors if "422" not in e], console_errors  # no CSP violation


def test_page_shows_a_file_name_with_a_percent_sign_as_it_is(tiny_run, tmp_path) -> None:
    """A photo named 100%22.jpg was shown as 100".jpg: the browser sends a '"' in a file name as %22, and '%' as
    it is. The page sends the name again as a plain field, which is sent as it is."""
    photo = tmp_path / "100%22.jpg"
    shutil.copy(sorted(ROSES.glob("*.jpg"))[0], photo)
    with _browser(serve.create_app(tiny_run)) as (url, browser):
        page = browser.new_page()
        page.goto(url + "/")
        page.set_input_files("#file", str(photo))
        sync_api.expect(page.locator("#meta")).to_contain_text("ms", timeout=15_000)
        assert page.locator("#meta").inner_text().startswith("100%22.jpg \u00b7 ")


def test_page_shows_why_a_gradcam_overlay_is_one_flat_tint(tiny_run, tmp_path) -> None:
    """A 1x1 feature map makes every overlay one flat tint; the page showed it without a word. It now shows the
    answer's gradcam_note under the overlay, and only while the overlay is shown."""
    import base64
    import io

    from PIL import Image

    photo = tmp_path / "rose.jpg"
    shutil.copy(sorted(ROSES.glob("*.jpg"))[0], photo)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 200)).save(buf, "PNG")
    note = "The feature map Grad-CAM explains (x) is 1x1 at this model's 32x32 input: every map is uniform"
    answer = {
        "file": "rose.jpg",
        "top_k": [{"class": "roses", "probability": 1.0}],
        "gradcam_png": base64.b64encode(buf.getvalue()).decode(),
        "gradcam_note": note,
    }
    with _browser(serve.create_app(tiny_run)) as (url, browser):
        page = browser.new_page()
        page.route("**/predict*", lambda route: route.fulfill(json=answer))
        page.goto(url + "/")
        page.check("#gradcam")
        page.set_input_files("#file", str(photo))
        sync_api.expect(page.locator("#cam-note")).to_have_text(note, timeout=15_000)
        assert page.locator("#cam-note").is_visible()
        page.uncheck("#gradcam")  # the photo itself: nothing to explain
        sync_api.expect(page.locator("#cam-note")).to_be_hidden()
        page.check("#gradcam")
        sync_api.expect(page.locator("#cam-note")).to_be_visible()


def test_page_hides_the_preview_of_a_refused_upload(tiny_run, tmp_path) -> None:
    """After a 415 the page kept the preview of the refused file: a broken-image icon named "uploaded photo". An
    error answer now hides it (until a file gets an answer), and says there is no answer for it."""
    photo = tmp_path / "rose.jpg"
    shutil.copy(sorted(ROSES.glob("*.jpg"))[0], photo)
    fake = tmp_path / "notes.jpg"
    fake.write_bytes(b"not an image at all\n" * 20)
    with _browser(serve.create_app(tiny_run)) as (url, browser):
        page = browser.new_page()
        page.goto(url + "/")
        page.set_input_files("#file", str(fake))
        sync_api.expect(page.locator("#error")).to_contain_text("Cannot decode image", timeout=15_000)
        sync_api.expect(page.locator("#photo")).to_be_hidden()
        assert page.locator("#photo").get_attribute("src") is None
        sync_api.expect(page.locator("#hint")).to_have_text("No answer for this photo (see the message above).")
        with page.expect_response(lambda r: "gradcam=1" in r.url, timeout=15_000) as asked:
            page.check("#gradcam")  # asks again for the same file: refused again
        assert asked.value.status == 415
        page.uncheck("#gradcam")  # shows what there is to show: still nothing
        sync_api.expect(page.locator("#error")).to_contain_text("Cannot decode image")
        sync_api.expect(page.locator("#photo")).to_be_hidden()
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#results li .cls", timeout=30_000)
        sync_api.expect(page.locator("#photo")).to_be_visible()
        sync_api.expect(page.locator("#hint")).to_be_hidden()


def test_page_says_when_the_browser_cannot_show_a_photo_the_server_read(tiny_run, tmp_path) -> None:
    """A TIFF, which the server decodes and Chromium cannot draw, was answered beside a broken-image icon named
    "uploaded photo". The page now says the browser cannot show the format; the Grad-CAM overlay (a PNG the server
    drew) is shown all the same, and the next photo is drawn again."""
    from PIL import Image

    photo = sorted(ROSES.glob("*.jpg"))[0]
    tiff = tmp_path / "rose.tif"
    with Image.open(photo) as im:
        im.convert("RGB").save(tiff, format="TIFF")
    with _browser(serve.create_app(tiny_run)) as (url, browser):
        page = browser.new_page()
        page.goto(url + "/")
        page.set_input_files("#file", str(tiff))
        page.wait_for_selector("#results li .cls", timeout=30_000)  # the server read it
        sync_api.expect(page.locator("#hint")).to_have_text(
            "This browser cannot show this file's format; the server read it (see the answer).", timeout=15_000
        )
        sync_api.expect(page.locator("#photo")).to_be_hidden()
        page.check("#gradcam")
        sync_api.expect(page.locator("#photo")).to_be_visible(timeout=30_000)
        assert (page.locator("#photo").get_attribute("src") or "").startswith("data:image/png")
        page.uncheck("#gradcam")
        sync_api.expect(page.locator("#photo")).to_be_hidden()
        page.set_input_files("#file", str(photo))
        sync_api.expect(page.locator("#photo")).to_be_visible(timeout=30_000)
        sync_api.expect(page.locator("#hint")).to_be_hidden()
