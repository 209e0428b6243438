from mirrorkit.remote import _strict_host_keys


def test_host_keys_checked_by_default() -> None:
    assert _strict_host_keys(None)
    assert _strict_host_keys("-o ConnectTimeout=5")


def test_inventory_can_relax_host_key_checking() -> None:
    assert not _strict_host_keys("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null")
    assert not _strict_host_keys("-o StrictHostKeyChecking no")
