"""The weekly surveillance bulletin: its HTML on SQLite and the real PostgreSQL, then as a person
sees it in headless Chromium and in the printed PDF.

The moh_* tables and dim_facility are seeded with known figures for twelve weeks (2026-W34..W45)
and decoys around them (an earlier and a later week, an age/sex band row, a zero row, an HIV test):
malaria every week with one district's counts hidden in W40 and hidden deaths in W45, cholera
(immediately notifiable) with cases this week in two districts, one of them hidden, measles the week
before, dengue whose only count in W43 is hidden. The HTML is read through a parser (elements,
decoded attributes and text), so an escaping mistake shows up as a wrong element.

The browser tests need Debian's ``chromium`` (``scripts/ensure-chromium``): under CI=true a missing
browser fails them, elsewhere they skip with the command to install it.
"""
from __future__ import annotations

from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import text

from transforms import bulletin
from transforms.warehouse import get_engine
from browser_support import run_chromium

WEEK = "2026-W45"
MONDAY = date(2026, 11, 2)
FACILITIES = [  # code, name, region, district
    ("CHU-SO", "CHU Sylvanus Olympio", "Lomé-Commune", "Golfe"),
    ("CHU-KARA", "CHU de Kara", "Kara", "Kozah"),
    ("HD-TSEVIE", "Hôpital de district de Tsévié", "Maritime", "Zio"),
    ("USP-NANERGOU", "USP de Nanergou", "Savanes", "Tône"),
]
REGION = {d: r for _, _, r, d in FACILITIES}
GENERATED = datetime(2026, 11, 10, 8, 30)


def wk(i: int) -> str:
    """Week i of the window: 0 is 2026-W34, 11 is 2026-W45."""
    return f"2026-W{34 + i:02d}"


def monday_of(week: str) -> str:
    y, n = week.split("-W")
    return date.fromisocalendar(int(y), int(n), 1).isoformat()


# --------------------------------------------------------------------------------------------------
# Seed


def idsr_rows() -> list[tuple]:
    """(iso_week, district, disease, notification, age_group, sex, suspected, confirmed, deaths, suppressed)."""
    rows = []
    for i in range(12):
        deaths = 6 if i == 8 else 0
        golfe = (40 + 5 * i, 20 + 2 * i, deaths, 0)
        if i == 11:
            golfe = (95, 42, None, 1)  # this week's malaria deaths in Golfe: 1 to 4, hidden
        rows.append((wk(i), "Golfe", "MALARIA", "weekly", "ALL", "ALL", *golfe))
        kozah = (None, None, 0, 1) if i == 6 else (20 + i, 10, 0, 0)  # W40: a small, hidden count
        rows.append((wk(i), "Kozah", "MALARIA", "weekly", "ALL", "ALL", *kozah))
    rows += [
        # decoys: outside the window, and a band row that must not be added to the district total
        ("2026-W33", "Golfe", "MALARIA", "weekly", "ALL", "ALL", 999, 0, 0, 0),
        ("2026-W46", "Golfe", "MALARIA", "weekly", "ALL", "ALL", 777, 0, 0, 0),
        (WEEK, "Golfe", "MALARIA", "weekly", "0-11m", "F", 33, 12, 0, 0),
        # cholera, immediately notifiable: this week in Golfe and (hidden) in Kozah
        ("2026-W44", "Golfe", "CHOLERA", "immediate", "ALL", "ALL", 5, 0, 0, 0),
        (WEEK, "Golfe", "CHOLERA", "immediate", "ALL", "ALL", 12, 6, None, 1),
        (WEEK, "Kozah", "CHOLERA", "immediate", "ALL", "ALL", None, None, 0, 1),
        # measles last week only: a curve, but not in this week's alert box
        ("2026-W44", "Zio", "MEASLES", "immediate", "ALL", "ALL", 6, 5, 0, 0),
        # dengue: the only count of W43 is hidden
        ("2026-W43", "Zio", "DENGUE", "weekly", "ALL", "ALL", None, 0, 0, 1),
        (WEEK, "Zio", "DENGUE", "weekly", "ALL", "ALL", 7, 5, 0, 0),
        # a published zero: no case, so no curve and no column
        (WEEK, "Golfe", "MENINGITIS", "immediate", "ALL", "ALL", 0, 0, 0, 0),
    ]
    return rows


def seed(engine, facilities=FACILITIES, idsr=None, lab=True, completeness=True) -> None:
    at = "2026-11-09 06:00:00"
    with engine.begin() as c:
        c.execute(text("INSERT INTO dim_facility (facility_code, name, type, region, district, dhis2_org_unit, "
                       "timezone, charset, updated_at) VALUES (:c, :n, 'chu', :r, :d, 'ou', 'Africa/Lome', "
                       "'UTF-8', :u)"), [{"c": f, "n": n, "r": r, "d": d, "u": at} for f, n, r, d in facilities])
        rows = idsr_rows() if idsr is None else idsr
        c.execute(text(
            "INSERT INTO moh_idsr_weekly (iso_week, week_start, region, district, disease, notification, age_group, "
            "sex, suspected, confirmed, deaths, suppressed, updated_at) VALUES (:w, :ws, :r, :d, :dis, :n, :a, :s, "
            ":su, :co, :de, :sp, :u)"),
            [{"w": w, "ws": monday_of(w), "r": REGION.get(d, "Maritime"), "d": d, "dis": dis, "n": n, "a": a, "s": s,
              "su": su, "co": co, "de": de, "sp": sp, "u": at} for w, d, dis, n, a, s, su, co, de, sp in rows])
        if lab:
            c.execute(text(
                "INSERT INTO moh_lab_activity (iso_week, week_start, region, district, test, tests_done, positives, "
                "positivity_rate, suppressed, updated_at) VALUES (:w, :ws, :r, :d, :t, :n, :p, :rate, :sp, :u)"),
                [{"w": w, "ws": monday_of(w), "r": REGION[d], "d": d, "t": t, "n": n, "p": p, "rate": rate, "sp": sp,
                  "u": at} for w, d, t, n, p, rate, sp in [
                    (WEEK, "Golfe", "MALARIA_RDT", 200, 90, 0.45, 0),
                    (WEEK, "Golfe", "MALARIA_SMEAR", None, None, None, 1),
                    (WEEK, "Kozah", "MALARIA_RDT", 50, 20, 0.4, 0),
                    (WEEK, "Golfe", "HIV_TEST", 30, None, None, 1),  # not a malaria test: not shown
                    ("2026-W44", "Golfe", "MALARIA_RDT", 111, 11, 0.1, 0)]])
        if completeness:
            c.execute(text(
                "INSERT INTO moh_completeness (iso_week, week_start, facility_code, region, district, expected_days, "
                "reporting_days, on_time_days, completeness, timeliness, messages, late_messages, updated_at) "
                "VALUES (:w, :ws, :f, :r, :d, :e, :rep, :ot, :co, :ti, :m, :l, :u)"),
                [{"w": w, "ws": monday_of(w), "f": f, "r": REGION[d], "d": d, "e": 7, "rep": rep, "ot": ot,
                  "co": rep / 7, "ti": ot / 7, "m": m, "l": late, "u": at} for w, f, d, rep, ot, m, late in [
                    (WEEK, "CHU-SO", "Golfe", 7, 7, 1200, 0),
                    (WEEK, "CHU-KARA", "Kozah", 5, 3, 300, 40),
                    (WEEK, "HD-TSEVIE", "Zio", 7, 6, 150, 5),
                    ("2026-W44", "CHU-SO", "Golfe", 1, 0, 9, 9)]])


# --------------------------------------------------------------------------------------------------
# A small DOM from the HTML text


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def iter(self):
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.iter()

    def find(self, tag: str, cls: str | None = None, **attrs) -> list["Node"]:
        attrs = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [n for n in self.iter() if n.tag == tag and (cls is None or set(cls.split()) <= n.classes())
                and all(n.attrs.get(k) == v for k, v in attrs.items())]

    def one(self, tag: str, cls: str | None = None, **attrs) -> "Node":
        found = self.find(tag, cls, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} class={cls} {attrs}>"
        return found[0]


class Dom(HTMLParser):
    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "source", "wbr"}

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def dom(page: str) -> Node:
    return Dom(page).root


def squash(s: str) -> str:
    """Text with every kind of space as one plain space (French uses no-break spaces)."""
    return " ".join(s.replace("\u00a0", " ").replace("\u202f", " ").split())


def render(engine, lang="fr", week=WEEK, **kw) -> str:
    return bulletin.render_weekly(engine, week, lang, generated_at=GENERATED, **kw)


# --------------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize("given", ["2026W45", "2026-W45", "2026w45", " 2026-W45 "])
def test_week_forms_are_accepted(given):
    assert bulletin.parse_week(given) == (WEEK, MONDAY)


@pytest.mark.parametrize("given", ["2026-45", "W45", "2026W5", "2026W00", "2026W54", "2025W53", "26W45", "",
                                   "2026-11-02"])
def test_bad_weeks_are_refused_with_the_expected_form(given):
    with pytest.raises(bulletin.BulletinError, match="2026W45|ISO week"):
        bulletin.parse_week(given)


def test_53rd_week_exists_only_in_long_years():
    assert bulletin.parse_week("2026W53") == ("2026-W53", date(2026, 12, 28))  # 2026 starts on a Thursday
    with pytest.raises(bulletin.BulletinError, match="2025 has no ISO week 53"):
        bulletin.parse_week("2025-W53")


def test_bad_language_and_window_are_refused(sqlite_url):
    eng = get_engine(sqlite_url)
    with pytest.raises(bulletin.BulletinError, match="fr, en"):
        bulletin.render_weekly(eng, WEEK, "de")
    with pytest.raises(bulletin.BulletinError, match="weeks_back"):
        bulletin.render_weekly(eng, WEEK, "fr", weeks_back=0)
    with pytest.raises(bulletin.BulletinError, match="2026W45"):
        bulletin.render_weekly(eng, "45", "fr")


# --------------------------------------------------------------------------------------------------
# HTML


def test_bulletin_numbers_hidden_counts_and_sections(warehouse_url):
    eng = get_engine(warehouse_url)
    seed(eng)
    page = render(eng, "fr")
    root = dom(page)

    h1 = root.one("h1")
    assert squash(h1.text()) == "Bulletin épidémiologique hebdomadaire — Semaine 45 de 2026"
    assert squash(root.one("p", "period").text()) == "Du lundi 2 novembre au dimanche 8 novembre 2026"
    assert root.one("body").attrs["data-week"] == WEEK
    assert root.one("html").attrs["lang"] == "fr"

    # immediate box: cholera only (measles was last week, malaria is weekly, meningitis had no case)
    box = root.one("div", "immediate alert")
    assert [li.attrs["data-disease"] for li in box.find("li")] == ["CHOLERA"]
    item = squash(box.one("li").text())
    assert item == ("Choléra : 12 + <5 suspects, 6 + <5 confirmés, <5 décès — districts : Kozah (<5), Golfe (12)"), item

    # the week's table per disease
    summary = root.one("table", "summary")
    rows = {tr.attrs["data-disease"]: [squash(td.text()) for td in tr.find("td")] for tr in summary.find("tr")
            if "data-disease" in tr.attrs}
    assert list(rows) == ["MALARIA", "CHOLERA", "MEASLES", "DENGUE"], "idsr.yaml order, diseases with a case"
    malaria_window = sum(40 + 5 * i for i in range(12)) + sum(20 + i for i in range(12)) - 26  # Kozah W40 hidden
    assert rows["MALARIA"] == ["Paludisme", "hebdomadaire", "126", "52", "<5", "120",
                               f"{malaria_window:,}".replace(",", " ") + " + <5"]
    assert rows["CHOLERA"] == ["Choléra", "immédiate", "12 + <5", "6 + <5", "<5", "5", "17 + <5"]
    assert rows["DENGUE"][2:] == ["7", "5", "0", "0", "7 + <5"]
    assert "alert" in summary.one("tr", data_disease="CHOLERA").classes()
    assert "alert" not in summary.one("tr", data_disease="MEASLES").classes()

    zero = squash(root.one("p", "zero-immediate").text())
    assert "Méningite bactérienne" in zero and "Fièvre jaune" in zero
    assert "Choléra" not in zero and "Rougeole" not in zero and "Paludisme" not in zero

    # epidemic curves
    curves = root.find("svg", "epicurve")
    assert [s.attrs["data-disease"] for s in curves] == ["MALARIA", "CHOLERA", "MEASLES", "DENGUE"]
    assert all(s.attrs["data-weeks"] == "12" for s in curves)
    malaria = root.one("svg", "epicurve", data_disease="MALARIA")
    bars = {b.attrs["data-week"]: int(b.attrs["data-value"]) for b in malaria.find("rect", "bar suspected")
            if "suppressed" not in b.classes()}
    assert bars == {wk(i): 60 + 6 * i for i in range(12) if i != 6} | {wk(6): 70}, "band and outside rows excluded"
    assert {b.attrs["data-week"]: int(b.attrs["data-value"]) for b in malaria.find("rect", "bar confirmed")
            if "suppressed" not in b.classes()}[WEEK] == 52
    hidden = malaria.find("rect", "bar suppressed")
    assert sorted((b.attrs["data-week"], b.attrs["class"]) for b in hidden) == [
        (wk(6), "bar confirmed suppressed"), (wk(6), "bar suspected suppressed")]
    assert [c.attrs["data-week"] for c in malaria.find("circle", "death") if "suppressed" not in c.classes()] == [wk(8)]
    assert [c.attrs["data-week"] for c in malaria.find("circle", "death suppressed")] == [WEEK]
    assert "70+" in [squash(t.text()) for t in malaria.find("text", "value")]
    assert len(malaria.find("polyline", "deaths-line")) == 1
    # The line stops before the week whose deaths are hidden: drawn through it, it put it at zero.
    assert len(malaria.one("polyline", "deaths-line").attrs["points"].split()) == 11
    cholera = root.one("svg", "epicurve", data_disease="CHOLERA")
    assert not cholera.find("polyline") and len(cholera.find("circle", "death suppressed")) == 1
    dengue = root.one("svg", "epicurve", data_disease="DENGUE")
    w43 = [b for b in dengue.find("rect", "bar suspected") if b.attrs["data-week"] == "2026-W43"]
    assert [b.attrs["class"] for b in w43] == ["bar suspected suppressed"], "a hidden week is a hatched bar, not 0"
    assert "<5" in [t.text() for t in dengue.find("text", "value")]
    assert not any(b.attrs.get("data-value") == "0" for b in root.find("rect", "bar"))

    # district table: regions north to south, every district, hidden counts as <5
    table = root.one("table", "map")
    assert [squash(th.text()) for th in table.find("th", "region")] == ["Savanes", "Kara", "Maritime", "Lomé-Commune"]
    assert [tr.attrs["data-district"] for tr in table.find("tr") if "data-district" in tr.attrs] == [
        "Tône", "Kozah", "Zio", "Golfe"]

    def cell(district, disease):
        tr = table.one("tr", data_district=district)
        return tr.one("td", "cell", data_disease=disease)

    assert cell("Golfe", "MALARIA").text() == "95" and "n50" in cell("Golfe", "MALARIA").classes()
    assert cell("Kozah", "MALARIA").text() == "31" and "n10" in cell("Kozah", "MALARIA").classes()
    assert cell("Kozah", "CHOLERA").text() == "<5" and cell("Kozah", "CHOLERA").classes() == {"cell", "suppressed"}
    assert cell("Zio", "DENGUE").text() == "7" and "n1" in cell("Zio", "DENGUE").classes()
    assert cell("Tône", "MALARIA").text() == "0" and "n0" in cell("Tône", "MALARIA").classes()
    assert "<5" in cell("Kozah", "CHOLERA").attrs["title"]
    totals = {td.attrs["data-disease"]: squash(td.text()) for td in table.find("td", "cell total")}
    assert totals == {"MALARIA": "126", "CHOLERA": "12 + <5", "MEASLES": "0", "DENGUE": "7"}
    assert len(root.find("td", "cell suppressed")) == 1

    # lab: malaria tests only
    lab = root.one("table", "lab")
    assert [th.attrs["data-test"] for th in lab.find("th") if "data-test" in th.attrs] == ["MALARIA_RDT", "MALARIA_SMEAR"]
    golfe = [squash(td.text()) for td in lab.one("tr", data_district="Golfe").find("td")]
    assert golfe == ["Lomé-Commune", "Golfe", "200", "90", "45,0 %", "<5", "<5", "–"]
    kozah = [squash(td.text()) for td in lab.one("tr", data_district="Kozah").find("td")]
    assert kozah == ["Kara", "Kozah", "50", "20", "40,0 %", "–", "–", "–"]
    total = [squash(td.text()) for td in lab.one("tr", "total").find("td")]
    assert total == ["250", "110", "44,0 %", "<5", "<5", "–"]
    assert "Test VIH" not in page and "111" not in squash(lab.text())

    # completeness per facility, red under 80 %
    comp = root.one("table", "completeness")
    kara = comp.one("tr", data_facility="CHU-KARA")
    assert "CHU de Kara" in kara.text()
    assert [squash(td.text()) for td in kara.find("td", "rate")] == ["71 %", "43 %"]
    assert all("low" in td.classes() for td in kara.find("td", "rate"))
    so = comp.one("tr", data_facility="CHU-SO")
    assert not any("low" in td.classes() for td in so.find("td", "rate"))
    tsevie = comp.one("tr", data_facility="HD-TSEVIE")
    assert [squash(td.text()) for td in tsevie.find("td", "rate")] == ["100 %", "86 %"]
    assert not any("low" in td.classes() for td in tsevie.find("td", "rate"))
    tot = comp.one("tr", "total")
    assert [squash(td.text()) for td in tot.find("td", "rate")] == ["90 %", "76 %"]
    assert "low" in tot.one("td", "rate timeliness").classes() and "low" not in tot.one("td", "rate completeness").classes()

    # sections print on their own pages; no script anywhere; footer with the source and time
    assert [s.attrs["class"] for s in root.find("section")] == [
        "situation", "districts page", "lab page", "completeness page"]
    assert not root.find("script")
    assert "script-src" not in page and "default-src 'none'" in page
    foot = squash(root.one("footer").text())
    assert "moh_idsr_weekly" in foot and "Généré le 10 novembre 2026 à 08:30 UTC" in foot
    assert "Données mises à jour le 9 novembre 2026 à 06:00 UTC" in foot


def test_english_bulletin_has_english_labels_names_and_dates(warehouse_url):
    eng = get_engine(warehouse_url)
    seed(eng)
    fr, en = render(eng, "fr"), render(eng, "en")
    root = dom(en)
    assert squash(root.one("h1").text()) == "Weekly epidemiological bulletin — Week 45 of 2026"
    assert squash(root.one("p", "period").text()) == "Monday 2 November to Sunday 8 November 2026"
    assert root.one("html").attrs["lang"] == "en"
    box = squash(root.one("div", "immediate alert").text())
    assert "Cholera: 12 + <5 suspected, 6 + <5 confirmed, <5 deaths" in box
    names = [squash(tr.find("td")[0].text()) for tr in root.one("table", "summary").find("tr") if tr.find("td")]
    assert names == ["Malaria", "Cholera", "Measles", "Dengue"]
    assert [squash(th.text()) for th in root.one("table", "lab").find("th") if "data-test" in th.attrs] == [
        "Malaria RDT", "Malaria smear"]
    assert [squash(td.text()) for td in root.one("table", "lab").one("tr", data_district="Golfe").find("td")][4] == "45.0%"
    assert "Generated 10 November 2026, 08:30 UTC" in squash(root.one("footer").text())
    # what a reader sees (the body's text: labels, names, chart titles), not class names
    en_text, fr_text = squash(root.one("body").text()), squash(dom(fr).one("body").text())
    for french in ("Paludisme", "Choléra", "Semaine", "lundi", "Complétude", "suspects", "novembre"):
        assert french not in en_text, french
    for english in ("Malaria", "Cholera", "Week 45", "Monday", "Completeness", "suspected", "November"):
        assert english not in fr_text, english
    # same figures in both languages
    figures = [(c.attrs.get("data-value"), c.attrs.get("data-hidden")) for c in root.find("rect", "bar")]
    assert len(figures) > 20 and figures == [
        (c.attrs.get("data-value"), c.attrs.get("data-hidden")) for c in dom(fr).find("rect", "bar")]


def test_text_from_the_warehouse_is_escaped(warehouse_url):
    eng = get_engine(warehouse_url)
    hostile_name = "<script>alert('x')</script> & \"Fils\""
    hostile_district = "<img src=x onerror=alert(1)>"
    hostile_code = 'X"><script>alert(2)</script>'
    seed(eng, facilities=[("CHU-SO", hostile_name, "Lomé-Commune", hostile_district)],
         idsr=[(WEEK, hostile_district, hostile_code, "immediate", "ALL", "ALL", 9, 0, 0, 0)], lab=False,
         completeness=False)
    with eng.begin() as c:
        c.execute(text("INSERT INTO moh_completeness VALUES ('2026-W45', '2026-11-02', 'CHU-SO', 'Lomé-Commune', "
                       ":d, 7, 7, 7, 1.0, 1.0, 10, 0, '2026-11-09 06:00:00')"), {"d": hostile_district})
    page = render(eng, "en")
    root = dom(page)
    assert not root.find("script") and not root.find("img")
    # the hostile code is an unknown disease: shown under its code, flagged immediate by its row
    assert root.one("svg", "epicurve").attrs["data-disease"] == hostile_code
    assert root.one("div", "immediate alert").one("li").attrs["data-disease"] == hostile_code
    assert hostile_district in root.one("table", "map").text()
    assert hostile_name in root.one("table", "completeness").text()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_empty_warehouse_renders_a_calm_bulletin(sqlite_url):
    eng = get_engine(sqlite_url)
    root = dom(render(eng, "fr"))
    assert root.one("div", "immediate calm")
    assert not root.find("div", "immediate alert")
    assert not root.find("svg", "epicurve")
    assert squash(root.one("p", "no-cases").text()) == "Aucun cas notifié au cours des 12 dernières semaines."
    assert "Aucune activité de laboratoire" in root.one("section", "lab page").text()
    assert "Aucune donnée de complétude" in root.one("section", "completeness page").text()
    assert "Données mises à jour" not in root.one("footer").text()


def test_window_crosses_the_new_year(warehouse_url):
    eng = get_engine(warehouse_url)
    seed(eng, idsr=[("2025-W51", "Golfe", "MALARIA", "weekly", "ALL", "ALL", 10, 0, 0, 0),
                    ("2025-W52", "Golfe", "MALARIA", "weekly", "ALL", "ALL", 20, 0, 0, 0),
                    ("2026-W02", "Golfe", "MALARIA", "weekly", "ALL", "ALL", 30, 0, 0, 0),
                    ("2025-W50", "Golfe", "MALARIA", "weekly", "ALL", "ALL", 999, 0, 0, 0)],
         lab=False, completeness=False)
    root = dom(render(eng, "fr", week="2026W02", weeks_back=4))
    curve = root.one("svg", "epicurve", data_disease="MALARIA")
    assert curve.attrs["data-weeks"] == "4"
    assert {b.attrs["data-week"]: b.attrs["data-value"] for b in curve.find("rect", "bar suspected")} == {
        "2025-W51": "10", "2025-W52": "20", "2026-W02": "30"}
    assert [squash(t.text()) for t in curve.find("text") if squash(t.text()).startswith("S")] == [
        "S51", "S52", "S01", "S02"]
    assert squash(root.one("p", "period").text()) == "Du lundi 5 janvier au dimanche 11 janvier 2026"
    assert squash(dom(render(eng, "fr", week="2026W01")).one("p", "period").text()) == \
        "Du lundi 29 décembre 2025 au dimanche 4 janvier 2026"


def test_missing_chromium_is_a_clear_error_and_writes_nothing(sqlite_url, tmp_path, monkeypatch):
    eng = get_engine(sqlite_url)
    monkeypatch.setattr(bulletin.shutil, "which", lambda *_a, **_k: None)
    monkeypatch.setattr(bulletin.os, "access", lambda *_a, **_k: False)
    with pytest.raises(bulletin.BulletinError, match=r"apt-get install chromium.*scripts/ensure-chromium"):
        bulletin.write_weekly(eng, "2026W45", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    [html_only] = bulletin.write_weekly(eng, "2026W45", tmp_path / "out", "en", pdf=False)
    assert html_only.name == "bulletin-2026W45-en.html" and "<svg" not in html_only.read_text(encoding="utf-8")
    assert bulletin.cli_weekly(eng, "2026W45", tmp_path / "out") == 2


# --------------------------------------------------------------------------------------------------
# In Chromium and on paper


WINDOW = "1280,6000"


def _chromium(chromium, profile, *args):
    return run_chromium(chromium, profile, *args, window=WINDOW)






def pixels_of(image, hex_color: str, tolerance: int = 12) -> int:
    """How many pixels of a PIL image (or PNG path) are within ``tolerance`` per channel of the colour."""
    from PIL import Image, ImageChops

    img = Image.open(image) if isinstance(image, (str, Path)) else image
    target = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    bands = img.convert("RGB").split()
    masks = [b.point(lambda v, t=t: 255 if abs(v - t) <= tolerance else 0) for b, t in zip(bands, target)]
    hit = ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2])
    return hit.histogram()[255]


def test_bulletin_in_chromium_shows_the_figures_and_draws_the_curves(chromium, sqlite_url, tmp_path):
    eng = get_engine(sqlite_url)
    seed(eng)
    [page] = bulletin.write_weekly(eng, "2026W45", tmp_path / "full", "fr", pdf=False)

    r = _chromium(chromium, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert r.returncode == 0 and "<body" in r.stdout, r.stderr[-800:]
    built = dom(r.stdout)
    assert squash(built.one("h1").text()).startswith("Bulletin épidémiologique hebdomadaire")
    assert [s.attrs["data-disease"] for s in built.find("svg", "epicurve")] == ["MALARIA", "CHOLERA", "MEASLES",
                                                                              "DENGUE"]
    # malaria 12 weeks + 1 hidden block (W40), cholera 2 + 1 hidden, measles 1, dengue 1 + 1 hidden
    assert len(built.find("rect", "bar suspected")) == 13 + 3 + 1 + 2
    table = built.one("table", "map")
    assert table.one("tr", data_district="Kozah").one("td", "cell", data_disease="CHOLERA").text() == "<5"
    assert [li.attrs["data-disease"] for li in built.one("div", "immediate alert").find("li")] == ["CHOLERA"]
    assert not built.find("script")

    shot = tmp_path / "full.png"
    r = _chromium(chromium, tmp_path / "profile-shot", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 0, f"no screenshot (exit {r.returncode}): {r.stderr[-800:]}"
    blue, orange = pixels_of(shot, bulletin.COLORS["suspected"]), pixels_of(shot, bulletin.COLORS["confirmed"])
    # Malaria alone has eleven suspected bars about 19 px wide and 80 to 160 px high: tens of
    # thousands of pixels; the legend swatch is about a hundred. A broken chart has next to none.
    assert blue >= 10000, f"suspected bars barely drawn ({blue} px)"
    assert orange >= 4000, f"confirmed bars barely drawn ({orange} px)"
    hatch = pixels_of(shot, bulletin.COLORS["hatch_bg"], tolerance=6)
    assert hatch >= 2000, f"hidden counts not drawn as hatched bars ({hatch} px)"
    low = pixels_of(shot, bulletin.COLORS["low"], tolerance=6)
    assert low >= 300, f"completeness under 80 % not drawn in red ({low} px)"

    # the same count on a bulletin without cases must find none, so the pixel checks can fail
    [empty] = bulletin.write_weekly(eng, "2024W10", tmp_path / "empty", "fr", pdf=False)
    shot2 = tmp_path / "empty.png"
    _chromium(chromium, tmp_path / "profile-shot2", f"--screenshot={shot2}", empty.as_uri())
    assert shot2.is_file()
    assert pixels_of(shot2, bulletin.COLORS["suspected"]) == 0
    assert pixels_of(shot2, bulletin.COLORS["confirmed"]) == 0


def test_a_failed_print_leaves_the_previous_html_and_pdf_together(sqlite_url, tmp_path, monkeypatch):
    """The HTML was replaced before the PDF was printed: a Chromium crash left this week's HTML
    beside last run's PDF, two bulletins with different figures in the folder a district mails."""
    import stat

    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\necho crashed >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(bulletin, "chromium_path", lambda: str(fake))
    out = tmp_path / "out"
    out.mkdir()
    (out / "bulletin-2026W45-fr.html").write_text("<html>run of Monday</html>")
    (out / "bulletin-2026W45-fr.pdf").write_bytes(b"%PDF-1.7 run of Monday")
    eng = get_engine(sqlite_url)
    seed(eng)
    with pytest.raises(bulletin.BulletinError, match="could not print bulletin-2026W45-fr.html"):
        bulletin.write_weekly(eng, "2026W45", out, "fr")
    assert (out / "bulletin-2026W45-fr.html").read_text() == "<html>run of Monday</html>"
    assert (out / "bulletin-2026W45-fr.pdf").read_bytes() == b"%PDF-1.7 run of Monday"
    assert sorted(p.name for p in out.iterdir()) == ["bulletin-2026W45-fr.html", "bulletin-2026W45-fr.pdf"]


def test_pdf_is_a4_with_title_text_and_curves_on_page_one(chromium, sqlite_url, tmp_path):
    import pymupdf
    from PIL import Image

    eng = get_engine(sqlite_url)
    seed(eng)
    html_path, pdf_path = bulletin.write_weekly(eng, "2026W45", tmp_path / "out", "en")
    assert (html_path.name, pdf_path.name) == ("bulletin-2026W45-en.html", "bulletin-2026W45-en.pdf")
    assert pdf_path.read_bytes()[:5] == b"%PDF-"
    assert not list((tmp_path / "out").glob("*.tmp"))

    with pymupdf.open(pdf_path) as doc:
        # one section per page at least: situation, districts, lab, completeness
        assert doc.page_count >= 4, doc.page_count
        first = doc[0]
        assert abs(first.rect.width - 595) < 3 and abs(first.rect.height - 842) < 3, "A4 portrait"
        words = squash(first.get_text())
        assert "Weekly epidemiological bulletin — Week 45 of 2026" in words, words[:300]
        assert "Immediately notifiable diseases" in words and "Cholera" in words
        everything = squash(" ".join(p.get_text() for p in doc))
        assert "<5" in everything and "CHU de Kara" in everything and "Reporting completeness" in everything
        png = tmp_path / "page1.png"
        first.get_pixmap(dpi=100).save(png)
        last = doc[doc.page_count - 1].get_pixmap(dpi=100)
    img = Image.open(png)
    assert img.size[0] > 700 and img.size[1] > 1000
    blue = pixels_of(img, bulletin.COLORS["suspected"])
    assert blue >= 5000, f"no epidemic curve on page 1 of the PDF ({blue} px)"
    assert pixels_of(img, bulletin.COLORS["confirmed"]) >= 2000
    # the last page is completeness: no curve there, so the colour count does tell pages apart
    last_png = tmp_path / "last.png"
    last.save(last_png)
    assert pixels_of(last_png, bulletin.COLORS["suspected"]) == 0
