"""crictl pull / images / inspecti / rmi / imagefsinfo against rktlet."""

from __future__ import annotations


def test_image_lifecycle_with_crictl(crictl, pushed_images):
    image = pushed_images["busybox"]
    out = crictl.run("pull", image.ref).stdout
    assert image.image_id in out
    listed = crictl.json("images")["images"]
    assert [i["id"] for i in listed] == [image.image_id]
    assert listed[0]["repoTags"] == [image.ref]
    table = crictl.run("images").stdout
    assert image.ref.rsplit(":", 1)[0] in table and "latest" in table
    inspected = crictl.json("inspecti", image.ref)
    assert inspected["status"]["id"] == image.image_id
    assert inspected["info"]["imageSpec"]["config"]["Cmd"] == ["sh"]
    fs = crictl.json("imagefsinfo")
    assert int(fs["status"]["imageFilesystems"][0]["usedBytes"]["value"]) > 1_000_000
    crictl.run("rmi", image.ref)
    assert crictl.json("images")["images"] == []


def test_crictl_pull_missing_image_fails_clearly(crictl, registry):
    result = crictl.run("pull", f"{registry.host}/absent/image:1", check=False)
    assert result.returncode != 0
    assert "not found" in result.stderr.lower()
