"""A family registers itself where it is defined: the platform's families, their store tags, the runner service's
models and the console's forms are read from those registrations, never from a list."""

import pytest

from contracts.preprocessing import PREPROCESSING, ImagePreprocessing, preprocessing_for
from services.families.base import FAMILIES, family_tags, register_family, served_tags
from services.settings import ServeSettings
from training.tasks import TASKS
from training.tasks.base import REGISTERED, register_task


def test_the_families_are_registered_with_their_settings_tags_and_console_routes():
    settings = ServeSettings(
        image_model="cnn:v1", lstm_model="l:v1", gru_model="g:v1", text_model="t:v1", models="x:v1"
    )
    assert family_tags(settings) == {
        "forecast": ("l:v1", "g:v1"),
        "generation": ("fashion-diffusion:latest", "fashion-gan:latest"),
        "image": ("cnn:v1",),
        "text": ("t:v1",),
    }
    served = ("l:v1", "g:v1", "fashion-diffusion:latest", "fashion-gan:latest", "cnn:v1", "t:v1", "x:v1")
    assert served_tags(settings) == served
    assert family_tags(ServeSettings(gan_model=""))["generation"] == ("fashion-diffusion:latest",)
    assert family_tags(ServeSettings(generation_model="", gan_model=""))["generation"] == ()  # empty: not served
    routes = {name: spec.console_route for name, spec in FAMILIES.items()}
    assert routes == {
        "forecast": "/forecast",
        "generation": "/generate_images",
        "image": "/classify_image",
        "text": "/classify_text",
    }


def test_a_new_family_is_served_and_offered_by_its_registration_alone(monkeypatch):
    monkeypatch.setattr("services.families.base.FAMILIES", dict(FAMILIES))
    from services.families import base

    @register_family("toy", lambda s: (s.image_model.replace("fashion-cnn", "toy"),), console_route="/toy")
    class ToyFamily:
        pass

    assert base.FAMILIES["toy"].kind is ToyFamily
    assert family_tags(ServeSettings())["toy"] == ("toy:latest",)
    assert "toy:latest" in served_tags(ServeSettings())
    with pytest.raises(ValueError, match="already registered"):
        register_family("toy", lambda s: ())(ToyFamily)


def test_a_task_and_a_preprocessing_register_where_they_are_defined(monkeypatch):
    assert list(TASKS) == [
        "fashion-cnn",
        "co2-lstm",
        "co2-gru",
        "wordnet-transformer",
        "fashion-diffusion",
        "fashion-gan",
    ]
    assert PREPROCESSING["image-classification"] is PREPROCESSING["image-generation"] is ImagePreprocessing
    monkeypatch.setattr("training.tasks.base.REGISTERED", dict(REGISTERED))
    with pytest.raises(ValueError, match="already registered"):
        register_task(TASKS["fashion-cnn"])
    monkeypatch.setitem(PREPROCESSING, "toy-kind", ImagePreprocessing)
    with pytest.raises(ValueError, match="already has a preprocessing"):
        preprocessing_for("toy-kind")(ImagePreprocessing)
