import pytest

from common.errors import InvalidInput
from common.model_ref import ModelRef, parse

C = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("text,want,canonical", [
    pytest.param("hf:org/repo", ModelRef("hf", "org/repo", "main"), "hf:org/repo@main",
                 id="default-main"),
    pytest.param("hf:Org-1/re_po.v2@v1.0", ModelRef("hf", "Org-1/re_po.v2", "v1.0"),
                 "hf:Org-1/re_po.v2@v1.0", id="tag"),
    pytest.param(f"hf:org/repo@{C}", ModelRef("hf", "org/repo", C), f"hf:org/repo@{C}",
                 id="commit"),
    pytest.param("hf:org/repo@refs/pr/1", ModelRef("hf", "org/repo", "refs/pr/1"),
                 "hf:org/repo@refs/pr/1", id="pr-ref"),
    pytest.param("hf:org/repo@main::file=q4/model.gguf",
                 ModelRef("hf", "org/repo", "main", file="q4/model.gguf"),
                 "hf:org/repo@main::file=q4/model.gguf", id="one-file"),
    pytest.param("hf:org/repo::file=model.gguf",
                 ModelRef("hf", "org/repo", "main", file="model.gguf"),
                 "hf:org/repo@main::file=model.gguf", id="one-file-default-rev"),
    pytest.param("file:/models/tiny", ModelRef("file", path="/models/tiny"), "file:/models/tiny",
                 id="file"),
    pytest.param("file:///models/tiny", ModelRef("file", path="/models/tiny"), "file:/models/tiny",
                 id="file-url-form"),
])
def test_good_refs_parse_and_round_trip(text, want, canonical):
    ref = parse(text)
    assert ref == want
    assert str(ref) == ref.canonical == canonical
    assert parse(canonical) == ref


@pytest.mark.parametrize("text,why", [
    pytest.param("", "empty", id="empty"),
    pytest.param("org/repo", "unknown scheme", id="no-scheme"),
    pytest.param("s3:bucket/key", "unknown scheme", id="unknown-scheme"),
    pytest.param("HF:org/repo", "unknown scheme", id="scheme-case"),
    pytest.param("hf:", "empty repo id", id="empty-repo"),
    pytest.param("hf:repo", "exactly owner/name", id="no-owner"),
    pytest.param("hf:/repo", "exactly owner/name", id="empty-owner"),
    pytest.param("hf:org/", "exactly owner/name", id="empty-name"),
    pytest.param("hf:a/b/c", "exactly owner/name", id="three-parts"),
    pytest.param("hf:org/re po", "A-Z a-z 0-9", id="space-in-repo"),
    pytest.param("hf:-org/repo", "A-Z a-z 0-9", id="leading-dash"),
    pytest.param("hf:org/repo.", "A-Z a-z 0-9", id="trailing-dot"),
    pytest.param("hf:org/ré", "A-Z a-z 0-9", id="non-ascii"),
    pytest.param("hf:org/a--b", "'--'", id="double-dash"),
    pytest.param("hf:org/a..b", "'--'", id="double-dot"),
    pytest.param("hf:org/repo.git", ".git", id="dot-git"),
    pytest.param("hf:o/" + "r" * 95, "96", id="repo-too-long"),
    pytest.param("hf:org/repo@", "empty revision", id="empty-rev"),
    pytest.param("hf:org/repo@ma in", "whitespace", id="rev-space"),
    pytest.param("hf:org/repo@main\n", "whitespace", id="rev-newline"),
    pytest.param("hf:org/repo@a\x00b", "control", id="rev-nul"),
    pytest.param("hf:org/repo@../../etc", "'..'", id="rev-dotdot"),
    pytest.param("hf:org/repo@" + "v" * 256, "255", id="rev-too-long"),
    pytest.param("hf:org/repo@/main", "git forbids", id="rev-leading-slash"),
    pytest.param("hf:org/repo::file=", "empty file path", id="file-empty"),
    pytest.param("hf:org/repo::file=/etc/passwd", "absolute", id="file-absolute"),
    pytest.param("hf:org/repo::file=../x", "'..'", id="file-dotdot"),
    pytest.param("hf:org/repo::file=a/../../x", "'..'", id="file-inner-dotdot"),
    pytest.param("hf:org/repo::file=a//b", "empty", id="file-empty-segment"),
    pytest.param("hf:org/repo::file=a\\b", "backslash", id="file-backslash"),
    pytest.param("hf:org/repo::file=a\x00b", "control", id="file-nul"),
    pytest.param("hf:org/repo::revision=x", "unknown option", id="unknown-option"),
    pytest.param("hf:org/repo::file", "unknown option", id="option-without-value"),
    pytest.param("hf:org/repo::file=a::file=b", "twice", id="option-twice"),
    pytest.param("file:models/tiny", "relative", id="file-relative"),
    pytest.param("file:", "empty path", id="file-empty"),
    pytest.param("file://host/share", "host", id="file-host"),
    pytest.param("file:/models/../etc", "'..'", id="file-dotdot"),
    pytest.param("file:/models/a\x00", "control", id="file-nul"),
    pytest.param("file:/models/x::file=y", "only to hf", id="file-options"),
    pytest.param("hf:org/" + "x" * 5000, "longer than", id="huge"),
])
def test_hostile_refs_are_refused_with_a_reason(text, why):
    with pytest.raises(InvalidInput) as exc:
        parse(text)
    assert exc.value.code == "INVALID_MODEL_REF" and exc.value.param == "model_ref"
    assert why in exc.value.message


def test_a_ref_pins_to_a_commit():
    ref = parse("hf:org/repo@main::file=m.gguf")
    assert not ref.is_pinned
    pinned = ref.pinned(C)
    assert pinned.is_pinned and pinned.canonical == f"hf:org/repo@{C}::file=m.gguf"
    assert parse(pinned.canonical) == pinned
    assert parse("file:/x").is_pinned


@pytest.mark.parametrize("ref,commit", [
    pytest.param("hf:org/repo", "main", id="not-a-commit"),
    pytest.param("hf:org/repo", C.upper(), id="uppercase"),
    pytest.param("file:/x", C, id="file-has-no-revision"),
])
def test_pinning_needs_a_commit_and_an_hf_ref(ref, commit):
    with pytest.raises(ValueError):
        parse(ref).pinned(commit)
