import ragkit


def test_all_is_sorted_and_every_name_exists():
    assert ragkit.__all__ == sorted(ragkit.__all__)
    for name in ragkit.__all__:
        assert hasattr(ragkit, name), name


def test_every_public_class_or_function_is_listed():
    public = {
        name for name, value in vars(ragkit).items()
        if not name.startswith("_") and (isinstance(value, type) or callable(value))
    }
    assert public <= set(ragkit.__all__), public - set(ragkit.__all__)
