// Escaping of logfmt values and JSON strings.
#include "net/escape.h"

#include <doctest/doctest.h>

#include <string>

namespace tandem::net {
namespace {

std::string Escaped(std::string_view value, Escape style) {
  std::string out;
  AppendEscaped(value, style, &out);
  return out;
}

TEST_CASE("quotes, backslashes and line breaks are escaped in every style") {
  for (Escape style : {Escape::kLogfmt, Escape::kJson, Escape::kJsonAscii}) {
    CHECK(Escaped("a\"b\\c\nd\re\tf", style) == "a\\\"b\\\\c\\nd\\re\\tf");
    CHECK(Escaped("plain /path?x=1", style) == "plain /path?x=1");
  }
}

TEST_CASE("other control bytes and DEL use the style's hex form") {
  std::string_view value(
      "a\x01"
      "b\x7f"
      "c\x1b",
      6);
  CHECK(Escaped(value, Escape::kLogfmt) == "a\\x01b\\x7fc\\x1b");
  CHECK(Escaped(value, Escape::kJson) == "a\\u0001b\\u007fc\\u001b");
  CHECK(Escaped(std::string_view("\0", 1), Escape::kJson) == "\\u0000");
}

TEST_CASE("bytes over 0x7f pass through except in kJsonAscii") {
  std::string utf8 = "caf\xc3\xa9";
  CHECK(Escaped(utf8, Escape::kLogfmt) == utf8);
  CHECK(Escaped(utf8, Escape::kJson) == utf8);
  CHECK(Escaped(utf8, Escape::kJsonAscii) == "caf\\u00c3\\u00a9");
}

TEST_CASE("AppendJsonString quotes the escaped value") {
  std::string out = "x=";
  AppendJsonString("say \"hi\"", &out);
  CHECK(out == "x=\"say \\\"hi\\\"\"");
}

}  // namespace
}  // namespace tandem::net
