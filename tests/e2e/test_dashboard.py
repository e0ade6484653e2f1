"""The dashboard (GET / on the admin listener), as issue 5 states it: one
self-contained page, rendered by a real browser (headless Chromium), showing
each cluster and backend with its state and the reason of its last
transition -- here, a backend killed during the test."""

import html.parser
import os
import re
import unittest

from harness import TandemTestCase, http_request, make_config, scaled
from ops import (artifacts_dir, chromium, health_table, run_chromium,
                 wait_serving, wait_state)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag = tag
        self.attrs = dict(attrs)
        self.parent = parent
        self.children = []
        self.texts_and_children = []

    def text(self):
        """The text of this node and its descendants, whitespace collapsed."""
        parts = []

        def walk(node):
            for item in node.texts_and_children:
                if isinstance(item, Node):
                    walk(item)
                else:
                    parts.append(item)
        walk(self)
        return " ".join("".join(parts).split())

    def classes(self):
        return (self.attrs.get("class") or "").split()

    def find_all(self, tag=None, cls=None, **attrs):
        """Descendants with `tag`, class `cls` and attributes `attrs`
        (underscores in names stand for dashes)."""
        found = []
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        for child in self.children:
            if ((tag is None or child.tag == tag) and (cls is None or cls in child.classes())
                    and all(child.attrs.get(k) == v for k, v in wanted.items())):
                found.append(child)
            found.extend(child.find_all(tag, cls, **attrs))
        return found


class DomBuilder(html.parser.HTMLParser):
    """A tree of the serialized DOM Chromium dumps."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", [])
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.current)
        self.current.children.append(node)
        self.current.texts_and_children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        node = Node(tag, attrs, self.current)
        self.current.children.append(node)
        self.current.texts_and_children.append(node)

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.texts_and_children.append(data)


def parse_dom(text):
    builder = DomBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


class DashboardPageTest(TandemTestCase):

    def test_the_page_is_self_contained(self):
        worker = self.start_worker("w1")
        tandem = self.start_tandem(make_config([worker.address]))
        response = tandem.admin("/")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header("content-type").startswith("text/html"))
        page = response.body.decode()
        self.assertIn("<script", page)
        self.assertIn("<style", page)
        # Nothing is loaded from anywhere else: no URL with a scheme or a
        # host, no stylesheet or script file, no CSS import or url().
        for pattern in (r"(?i)\b(https?|wss?|ftp):", r"[\"'(=`]\s*//[a-z0-9.-]+\.[a-z]{2,}",
                        r"(?i)<link\b", r"(?i)<(script|img|iframe|embed|source)\b[^>]*\bsrc\s*=",
                        r"(?i)@import", r"(?i)\burl\s*\(", r"(?i)<base\b"):
            match = re.search(pattern, page)
            self.assertIsNone(match, "external reference %r in the dashboard: ...%s..." % (
                pattern, page[max(0, match.start() - 60):match.end() + 60] if match else ""))
        # Whatever it fetches is tandem's own admin listener.
        for target in re.findall(r"fetch\(\s*([^,)]+)", page):
            self.assertRegex(target.strip(), r"^[`\"']/", "fetch of " + target)
        for path in re.findall(r"fetch\(\s*[\"'](/[^\"']*)", page):
            self.assertEqual(tandem.admin(path).status, 200, path)


class DashboardBrowserTest(TandemTestCase):

    def setUp(self):
        chromium()  # fails the test when it is not installed

    def render(self, port, *args):
        result = run_chromium("http://127.0.0.1:%d/" % port,
                              ["--virtual-time-budget=8000"] + list(args),
                              timeout=scaled(90))
        self.assertEqual(result.returncode, 0, result.stderr.decode()[-3000:])
        return result

    def test_a_killed_backend_shows_as_down_with_its_reason(self):
        survivor = self.start_worker("w1")
        victim = self.start_worker("w2")
        tandem = self.start_tandem(make_config([survivor.address, victim.address],
                                               extra=health_table()))
        wait_state(tandem, survivor.address, "up")
        wait_state(tandem, victim.address, "up")
        wait_serving(tandem.port, "w1")
        wait_serving(tandem.port, "w2")

        # Before: both up.
        dom = parse_dom(self.render(tandem.admin_port, "--dump-dom").stdout.decode())
        states = {row.attrs["data-backend"]: row.find_all("span", cls="state")[0].text()
                  for row in dom.find_all("tr") if "data-backend" in row.attrs}
        self.assertEqual(states, {survivor.address: "up", victim.address: "up"})

        victim.kill()  # SIGKILL
        down = wait_state(tandem, victim.address, "down")
        reason = down["transitions"][-1]["reason"]
        self.assertEqual(reason, "3 consecutive HTTP checks failed: connection refused")
        self.assertEqual(http_request(tandem.port).header("x-worker"), "w1")

        dom = parse_dom(self.render(tandem.admin_port, "--dump-dom").stdout.decode())
        (cluster,) = dom.find_all("div", cls="cluster", data_cluster="compute")
        self.assertIn("all-active", cluster.text())
        headers = [th.text() for th in cluster.find_all("th")]
        for column in ("backend", "role", "standby", "state", "weight", "in flight", "req/s"):
            self.assertIn(column, headers)
        rows = {row.attrs["data-backend"]: row for row in cluster.find_all("tr")
                if "data-backend" in row.attrs}
        self.assertEqual(set(rows), {survivor.address, victim.address},
                         "backend rows in the rendered page")

        def shown(address):
            row = rows[address]
            (state,) = row.find_all("span", cls="state")
            (cell,) = row.find_all("td", cls="reason")
            return state.text(), state.classes(), cell.text()
        state, classes, shown_reason = shown(victim.address)
        self.assertEqual(state, "down")
        self.assertIn("down", classes)
        self.assertEqual(shown_reason, reason)
        state, _, shown_reason = shown(survivor.address)
        self.assertEqual(state, "up")
        self.assertIn("HTTP check passed", shown_reason)
        # The timeline lists the transition too.
        timeline = " ".join(ul.text() for ul in dom.find_all("ul", id="timeline"))
        self.assertIn(victim.address, timeline)
        self.assertIn(reason, timeline)

        path = os.path.join(artifacts_dir(), "dashboard.png")
        if os.path.exists(path):
            os.remove(path)
        self.render(tandem.admin_port, "--screenshot=" + path, "--window-size=1280,800",
                    "--hide-scrollbars")
        with open(path, "rb") as f:
            image = f.read()
        self.assertTrue(image.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG: " + path)
        self.assertGreater(len(image), 10000, "a blank screenshot? " + path)
        print("\ndashboard screenshot: " + path)


if __name__ == "__main__":
    unittest.main()
