"""A chat reply's text: what the server and the chat CLI show, streamed or not, is the same stripped text."""

from falconlm.tokenizer.chat_template import ReplyStream, reply_text


def test_streamed_pieces_add_up_to_the_reply_text():
    pieces = [" ", " Par", "is", " is", " big", ".", "\n", ""]
    stream = ReplyStream()
    shown = "".join(stream.push(p) for p in pieces)
    assert shown == reply_text("".join(pieces)) == "Paris is big."
    assert ReplyStream().push("\n") == ""  # white space alone waits for text
