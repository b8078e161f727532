from inference.actions import parse_actions


def test_it_removes_and_parses_complete_markup():
    text, actions = parse_actions("Here you go. [[ACTION:give default:apple 2]] Enjoy!")
    assert text == "Here you go. Enjoy!"
    assert actions == [{"name": "give", "args": ["default:apple", "2"]}]


def test_it_parses_several_actions_with_and_without_args():
    text, actions = parse_actions("[[ACTION:move 3 0 -2]] Follow me [[ACTION:follow alice]][[ACTION:jump]]")
    assert text == "Follow me"
    assert actions == [
        {"name": "move", "args": ["3", "0", "-2"]},
        {"name": "follow", "args": ["alice"]},
        {"name": "jump", "args": []},
    ]


def test_punctuation_after_removed_markup_closes_up():
    assert parse_actions("Aye [[ACTION:jump]], done.")[0] == "Aye, done."


def test_unterminated_markup_is_hidden_and_not_run():
    text, actions = parse_actions("Sure thing! [[ACTION:give default:diamond 64")
    assert (text, actions) == ("Sure thing!", [])


def test_markup_broken_by_a_new_opener_is_dropped_up_to_it():
    text, actions = parse_actions("A [[ACTION:give default:apple B [[ACTION:jump]] C")
    assert text == "A C"
    assert actions == [{"name": "jump", "args": []}]


def test_malformed_names_are_hidden_but_not_parsed():
    assert parse_actions("x [[ACTION:]] y [[ACTION:3d 1]] z [[ACTION:give a b c d e f g h i j]]") == ("x y z", [])


def test_plain_brackets_are_text():
    assert parse_actions("see [[wiki]] and [x]") == ("see [[wiki]] and [x]", [])


def test_text_without_markup_is_untouched_except_outer_space():
    assert parse_actions("  Hello,\nworld  ") == ("Hello,\nworld", [])
