"""`kbk.urls`: the scheme of a store's URL, its password, and the URL without it (for every message and file)."""

from __future__ import annotations

import importlib.util

from kbk.urls import redact_text, redact_url, url_password, url_scheme, with_installed_driver


def test_schemes_of_stores_and_paths():
    assert url_scheme("postgresql+psycopg2://u@h/db") == "postgresql"
    assert url_scheme("HTTP://host:5000") == "http"
    assert url_scheme("sqlite:////abs/mlflow.db") == "sqlite"
    assert url_scheme("/abs/study.journal") == "" and url_scheme("runs/s.journal") == ""
    assert url_scheme(r"C:\runs\mlflow.db") == ""  # a Windows drive, not a scheme


def test_passwords_are_found_and_hidden_in_database_and_server_urls():
    assert url_password("postgresql://kbk:s3cret@db:5432/kbk") == "s3cret"
    assert redact_url("postgresql://kbk:s3cret@db:5432/kbk") == "postgresql://kbk:***@db:5432/kbk"
    assert redact_url("http://kbk:s3cret@host:5000") == "http://kbk:***@host:5000"  # an MLflow server
    assert redact_url("https://kbk:s3cret@host/mlflow") == "https://kbk:***@host/mlflow"
    assert url_password("http://u:p%40ss@h") == "p@ss"  # URL-quoted in the URL, plain in the result
    assert "p%40ss" not in redact_url("http://u:p%40ss@h") and "p@ss" not in redact_url("http://u:p%40ss@h")
    for plain in ("postgresql://kbk@db/kbk", "/abs/study.journal", "sqlite:////tmp/mlflow.db", None, ""):
        assert url_password(plain) is None
        if plain:
            assert redact_url(plain) == plain


def test_secrets_are_hidden_in_any_text_in_every_form():
    assert redact_text("a p%40ss b p@ss c", ["p@ss"]) == "a *** b *** c"
    assert redact_text("nothing here", []) == "nothing here"


def test_a_bare_postgresql_url_names_the_installed_driver():
    url = "postgresql://u@h/db"
    expected = url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        expected = "postgresql+psycopg2://u@h/db"
    assert with_installed_driver(url) == expected
    assert with_installed_driver("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert with_installed_driver("sqlite:////x.db") == "sqlite:////x.db"
