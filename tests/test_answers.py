"""Quick answers: common questions answered in the lead's language, the rest left to a person; the files checked."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from bot.config import ConfigError, settings_from
from flows.answers import Answers, AnswersError, AnswersPolicy, load_answers
from flows.answers_eval import read_cases, score
from storage.models import Handoff, Lead

from conftest import ROOT, kindling, rows, services_of, shipped_templates
from test_handoff import press, visitor

BUTTONS = settings_from({}, env={}).handoff.buttons
EVAL_SET = ROOT / "tests" / "data" / "answers_eval.toml"
# A copy of an answer the shipped files could hold, with a mistake put in where each test needs it.
ANSWER = """small_talk = ["hi"]

[[answer]]
name = "pricing"
questions = ["How much does it cost?", "What are your prices?"]
text = \"\"\"
Hi {{ lead.first_name or "there" }}!
Plans start at $29.\"\"\"
buttons = ["Talk to a person"]
"""


@pytest.fixture(scope="module")
def shipped_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped templates: answers files a user adds never change a test."""
    return shipped_templates(tmp_path_factory.mktemp("shipped") / "templates")


@pytest.fixture(scope="module")
def shipped(shipped_folder: Path) -> Answers:
    return load_answers(shipped_folder, AnswersPolicy(), BUTTONS)


def lead(locale: str | None, first_name: str | None = None) -> Lead:
    return Lead(id=1, locale=locale, first_name=first_name)


def lint(capsys, monkeypatch, *args: str, templates: Path) -> tuple[int, str, str]:
    """`kindling lint ...` in-process with the shipped config.toml: (exit status, stdout, stderr)."""
    monkeypatch.setenv("KINDLING_TEMPLATES", str(templates))
    status = kindling(["--config", str(ROOT / "config.toml"), "lint", *args])
    out, err = capsys.readouterr()
    return status, out, err


def answers_folder(tmp_path: Path, files: dict[str, str]) -> Path:
    """A templates folder whose `_answers/` holds only the given files."""
    folder = tmp_path / "templates" / "_answers"
    folder.mkdir(parents=True)
    for name, source in files.items():
        (folder / name).write_text(source, encoding="utf-8")
    return folder.parent


def test_a_russian_lead_asking_the_price_gets_the_pricing_answer_in_russian_with_a_person_on_offer(shipped):
    text, buttons = shipped.reply(lead("ru-RU", "Олег"), "сколько стоит?")
    assert text.startswith("Олег, тарифы начинаются от 29 $ в месяц")
    assert buttons == [{"type": "reply", "text": "Поговорить с человеком"}]
    assert shipped.match("А сколько стоят ваши тарифы", "ru").name == "pricing"  # inflected forms match too


def test_a_chinese_lead_asking_how_much_gets_the_pricing_answer_in_chinese(shipped):
    text, buttons = shipped.reply(lead("zh-Hans"), "多少钱")
    assert text.startswith("套餐每月 29 美元起")
    assert buttons == [{"type": "reply", "text": "联系人工客服"}]


@pytest.mark.parametrize(
    ("locale", "question"),
    [
        ("en", "What's the weather like in Paris?"),
        ("en", "My invoice shows I was charged twice, please fix it"),
        ("ru", "где купить слона"),
        ("zh", "北京今天天气怎么样"),
    ],
)
def test_an_off_topic_or_specific_question_gets_no_answer_so_a_person_replies(shipped, locale, question):
    assert shipped.match(question, locale) is None
    assert shipped.reply(lead(locale), question) is None


@pytest.mark.parametrize(
    ("locale", "question", "between"),
    [
        ("en", "support", {"support_hours", "languages"}),
        ("en", "languages and prices", {"languages", "pricing"}),
        ("ru", "сколько стоит пробный период", {"free_trial", "pricing"}),
    ],
)
def test_a_question_two_answers_fit_about_as_well_gets_no_answer(shipped, locale, question, between):
    scores = shipped.index(locale).scores(question)
    assert {name for name, value in scores.items() if value >= shipped.policy.threshold} >= between
    assert shipped.match(question, locale) is None


def test_a_lead_without_a_file_for_their_language_is_matched_in_every_language(shipped):
    assert shipped.match("сколько стоит?", "de-DE").name == "pricing"
    assert shipped.match("多少钱", None).answer.language == "zh"
    assert shipped.match("多少钱", "en") is None  # a language with a file reads only its own


def test_a_template_error_in_an_answer_is_logged_and_nothing_is_sent(tmp_path, caplog):
    broken = ANSWER.replace('{{ lead.first_name or "there" }}', "{{ lead.first_name.upper() }}")
    answers = load_answers(answers_folder(tmp_path, {"en.toml": broken}), AnswersPolicy(), BUTTONS)
    assert answers.reply(lead("en", "Ann"), "how much does it cost")[0].startswith("Hi ANN!")  # lint's sample renders

    with caplog.at_level(logging.ERROR):
        assert answers.reply(lead("en"), "how much does it cost") is None
    assert "quick answer not sent" in caplog.text and "en.toml:3" in caplog.text


@pytest.mark.parametrize(
    ("mistake", "line", "message"),
    [
        (("Hi {{", "Hi {{ lead.frist_name }} {{"), 7, "has no attribute 'frist_name'"),
        (("Plans start", "{% if %}Plans start"), 8, "`text`: Expected an expression"),
        (('"Talk to a person"', '"Call us"'), 3, "button 'Call us' opens no handoff"),
        (('name = "pricing"', 'nmae = "pricing"'), 3, "unknown key 'nmae'"),
        (('questions = ["How', 'questions = "How'), 5, "not valid TOML"),
    ],
)
def test_a_broken_answers_file_stops_start_up_and_lint_naming_file_and_line(
    tmp_path, capsys, monkeypatch, mistake, line, message
):
    templates = answers_folder(tmp_path, {"ru.toml": ANSWER.replace(*mistake)})
    where = f"{templates / '_answers' / 'ru.toml'}:{line}: "
    with pytest.raises(AnswersError) as raised:
        load_answers(templates, AnswersPolicy(), BUTTONS)
    assert [str(problem) for problem in raised.value.problems if str(problem).startswith(where)], str(raised.value)
    assert message in str(raised.value)

    status, out, _ = lint(capsys, monkeypatch, templates=templates)
    assert status == 1
    assert any(row.startswith(where) and message in row for row in out.splitlines()), out


def test_lint_passes_the_shipped_answers(capsys, monkeypatch, shipped_folder):
    files = sorted((shipped_folder / "_answers").glob("*.toml"))
    status, out, err = lint(capsys, monkeypatch, *map(str, files), templates=shipped_folder)
    assert (status, out) == (0, "")
    assert "0 flow file(s) and 3 answers file(s) checked, 0 problem(s)" in err


async def test_a_broken_answers_file_stops_the_server_starting(make_client, settings, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(settings.templates, templates)
    (templates / "_answers" / "en.toml").write_text(ANSWER.replace("Plans start", "{% if %}Plans start"))
    with pytest.raises(AnswersError, match="en.toml:8: answer 'pricing': `text`"):
        await make_client(settings.with_(templates=templates))


@pytest.mark.parametrize("language", ["en", "ru", "zh"])
async def test_the_person_an_answer_offers_is_a_handoff_button_in_every_language(make_client, settings, db, language):
    app = await make_client(settings)
    [label] = services_of(app).intake.answers.by_language[language]["pricing"].buttons
    ws = await visitor(app)
    await press(app, ws, label)

    [handoff] = await rows(db, Handoff)
    assert (handoff.trigger, handoff.reason) == ("button", f'pressed "{label}"')


def test_the_thresholds_are_settings_from_0_to_1():
    assert settings_from({"answers": {"threshold": 0.4, "margin": 0}}, env={}).answers == AnswersPolicy(0.4, 0.0)
    for wrong in (30, -0.1, True):
        with pytest.raises(ConfigError, match="answers.threshold: a number from 0 to 1"):
            settings_from({"answers": {"threshold": wrong}}, env={})


def test_the_shipped_answers_keep_their_measured_precision_and_recall(shipped):
    """A quality guard on the shipped files and the question set (docs/answers.md has the figures)."""
    found = score(shipped, read_cases(EVAL_SET), shipped.policy)
    assert found["all"].precision >= 0.9 and found["all"].recall >= 0.7, found["all"]
    for language in ("en", "ru", "zh"):
        assert found[language].precision >= 0.9 and found[language].recall >= 0.55, (language, found[language])
    assert {language: found[language].cases for language in ("en", "ru", "zh")} == {"en": 46, "ru": 46, "zh": 46}
