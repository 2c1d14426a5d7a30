"""The web UI's logic without Gradio or a server: options, per-tab cancel flags, errors by control."""

from openspeedy.client.api import GenerationCancelled, GenerationError, GenerationTimeout
from openspeedy.ui.app import left_to_server, server_values
from openspeedy.ui.session import SERVER, CancelFlags, Generations, request_options


def test_empty_fields_are_left_to_the_server_and_numbers_are_typed():
    values = dict(negative_prompt="", num_frames=8.0, height=None, guidance_scale=7, seed=12.0)
    assert request_options(values) == {"num_frames": 8, "guidance_scale": 7.0, "seed": 12}
    assert type(request_options(values)["num_frames"]) is int


def test_the_approximations_fields_become_the_request_inputs():
    assert request_options(dict(feature_reuse_interval=3.0)) == {"feature_reuse_interval": 3}
    # the interval's two fields are one input; both empty leave it to the server
    assert request_options(dict(guidance_interval_start=None, guidance_interval_end="")) == {}
    assert request_options(dict(guidance_interval_start=0.2, guidance_interval_end=0.7)) == {
        "guidance_interval": (0.2, 0.7)}
    # one empty: that end of the whole range
    assert request_options(dict(guidance_interval_start=0.25)) == {"guidance_interval": (0.25, 1.0)}
    assert request_options(dict(guidance_interval_start="", guidance_interval_end=0.5)) == {
        "guidance_interval": (0.0, 0.5)}


def test_the_page_starts_at_the_servers_defaults_typed():
    parameters = {"default_num_frames": "8", "default_guidance_scale": "9.0", "default_feature_reuse_interval": "1",
                  "default_guidance_interval_start": "0.0", "default_guidance_interval_end": "1.0"}
    values = server_values(parameters)
    assert values == {"num_frames": 8, "guidance_scale": 9.0, "feature_reuse_interval": 1,
                      "guidance_interval_start": 0.0, "guidance_interval_end": 1.0}
    assert type(values["feature_reuse_interval"]) is int and type(values["guidance_interval_end"]) is float


def test_without_server_defaults_only_typed_fields_are_sent():
    # Gradio shows an empty Number as 0: until the page has the server's defaults, a 0 the user did not
    # type is no value, and goes to the server empty
    values = dict(negative_prompt="", num_frames=2, height=0, guidance_scale=0, seed=7, guidance_interval_start=0)
    assert left_to_server(values, frozenset({"num_frames", "guidance_scale"})) == dict(
        negative_prompt="", num_frames=2, height=None, guidance_scale=0, seed=7, guidance_interval_start=None)


def test_cancel_reaches_only_its_own_tab():
    flags = CancelFlags()
    first, second = flags.start("tab-1"), flags.start("tab-2")
    assert flags.cancel("tab-1")
    assert first.is_set() and not second.is_set()
    flags.finish("tab-1", first)
    assert not flags.cancel("tab-1")  # nothing running there any more


class FakeClient:
    def __init__(self, reachable: bool):
        self.reachable = reachable

    def is_reachable(self) -> bool:
        return self.reachable


def failed(error, reachable=True):
    return Generations("127.0.0.1:1", output_dir="/tmp")._failed(error, FakeClient(reachable))


def test_a_bad_input_is_shown_beside_its_control():
    update = failed(GenerationError("invalid input 'HEIGHT': must be a multiple of 8, got 63", "INVALID_ARGUMENT"))
    assert update.errors == {"height": "invalid input 'HEIGHT': must be a multiple of 8, got 63"}
    assert update.done
    update = failed(GenerationError("invalid input 'IMAGE': cannot be decoded", "INVALID_ARGUMENT"))
    assert list(update.errors) == ["image"]
    message = "invalid input 'GUIDANCE_INTERVAL': must be fractions of the steps with 0 <= start < end <= 1"
    assert failed(GenerationError(message, "INVALID_ARGUMENT")).errors == {"guidance_interval": message}
    message = "invalid input 'FEATURE_REUSE_INTERVAL': must be between 1 and 10, got 11"
    assert failed(GenerationError(message, "INVALID_ARGUMENT")).errors == {"feature_reuse_interval": message}


def test_server_trouble_is_shown_beside_the_server_field_in_words():
    busy = GenerationError("Exceeds maximum queue size", "UNAVAILABLE")
    assert "not reachable at 127.0.0.1:1" in failed(busy, reachable=False).errors[SERVER]
    assert failed(busy, reachable=True).errors[SERVER].startswith("busy after 5 attempts")
    assert "time limit" in failed(GenerationTimeout("no video within the time limit of 2 s")).errors[SERVER]
    assert failed(GenerationError("model 'unet' failed: out of memory", "INTERNAL")).errors == {
        SERVER: "model 'unet' failed: out of memory"}


def test_a_cancel_is_a_status_not_an_error():
    update = failed(GenerationCancelled("cancelled by the client after step 3/50", 3))
    assert update.errors == {} and update.status.startswith("Cancelled after step 3/50")


def test_no_image_is_asked_for_beside_the_image_control(tmp_path):
    (update,) = Generations("127.0.0.1:1", output_dir=tmp_path).run("tab", None, "a prompt")
    assert list(update.errors) == ["image"] and update.done


def test_a_generation_whose_page_went_away_is_cancelled(tmp_path):
    generations = Generations("127.0.0.1:1", output_dir=tmp_path)
    updates = generations.run("tab", tmp_path / "image.png", "x")
    next(updates)  # "Sending the request…"
    flag = generations.cancels._flags["tab"]
    updates.close()  # Gradio drops the generator when the tab closes
    assert flag.is_set() and "tab" not in generations.cancels._flags


def test_while_the_server_is_down_a_retry_says_not_reachable_not_busy(tmp_path):
    from openspeedy.client.api import RetryPolicy
    from tests.helpers import encode, random_image

    image = tmp_path / "image.png"
    image.write_bytes(encode(random_image()))
    generations = Generations("127.0.0.1:9", output_dir=tmp_path / "out",  # nothing listens on the discard port
                              retry=RetryPolicy(attempts=2, initial_s=0.01))
    updates = list(generations.run("tab", image, "x"))
    retry = next(update for update in updates if update.status.startswith("Server"))
    assert retry.status.startswith("Server not reachable; trying again")
    assert retry.errors[SERVER].startswith("not reachable at 127.0.0.1:9, retrying")
    assert "queue" not in " ".join(update.errors.get(SERVER, "") for update in updates)


def test_old_videos_are_deleted_and_recent_ones_kept(tmp_path):
    import os
    import time

    generations = Generations("127.0.0.1:1", output_dir=tmp_path, keep_files_s=60)
    old, recent = tmp_path / "old", tmp_path / "recent"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "openspeedy.mp4").write_bytes(b"video")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert generations.delete_old_files() == [old]
    assert not old.exists() and (recent / "openspeedy.mp4").exists()


def test_the_page_bounds_uploads_and_gradios_own_files(tmp_path):
    import argparse

    from openspeedy.ui.app import add_arguments, build, launch_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--max-upload-mb", "5", "--keep-files-s", "600"])
    assert launch_options(args) == {"max_file_size": "5mb"}
    assert parser.parse_args([]).max_upload_mb == 32 and parser.parse_args([]).keep_files_s == 3600
    page = build(Generations("127.0.0.1:1", output_dir=tmp_path, keep_files_s=args.keep_files_s))
    assert page.delete_cache == (150, 600)  # checked every quarter of the time a file is kept
