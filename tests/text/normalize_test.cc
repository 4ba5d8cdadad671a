// ftfy-style fix_text, piece by piece, and CLIP's whitespace_clean; expected values are what
// ftfy 6.1 and Python compute.
#include "text/normalize.h"

#include "testing/testing.h"
#include "text/ftfy.h"
#include "text/unicode.h"

namespace sdstack::text {
namespace {

TEST(WhitespaceClean, CollapsesAndStripsUnicodeWhitespace) {
  EXPECT_EQ(whitespace_clean("  a \t\n b\u00a0c\u3000d\x1c"
                             "e  "),
            "a b c d e");
  EXPECT_EQ(whitespace_clean("   "), "");
  EXPECT_EQ(whitespace_clean(""), "");
  // Not whitespace for Python: zero-width space and the Mongolian vowel separator.
  EXPECT_EQ(whitespace_clean("a\u200bb\u180ec"), "a\u200bb\u180ec");
}

TEST(FixText, LeavesOrdinaryTextAlone) {
  for (const char* text : {"a photograph of an astronaut riding a horse", "naïve café résumé Ångström über", "Ã",
                           "This text is fine already :þ", "AHÅ™, the new sofa from IKEA®",
                           "emoji 🐱🚀 👩\u200d🚀 ❤️ 👍🏽 🇫🇷", "Москва, Αθήνα, 東京",
                           "(masterpiece:1.2), <lora:foo:0.8>", ""}) {
    EXPECT_EQ(fix_text(text), text);
  }
}

TEST(FixText, UncurlsQuotes) {
  EXPECT_EQ(fix_text("“here’s a ‘test’”"), "\"here's a 'test'\"");
  EXPECT_EQ(fix_text("\u02bcokina"), "'okina");
}

TEST(FixText, FullWidthCharacters) {
  EXPECT_EQ(fix_text("ＬＯＵＤ　ＮＯＩＳＥＳ"), "LOUD NOISES");
  EXPECT_EQ(fix_text("Ｕﾀｰﾝ"), "Uターン");
}

TEST(FixText, LatinLigatures) {
  EXPECT_EQ(fix_text("ﬁnal ﬂuﬃest ĳs"), "final fluffiest ijs");
  EXPECT_EQ(fix_text("æther œuvre"), "æther œuvre");  // intended letters, not ligatures to split
}

TEST(FixText, HtmlEntitiesOnlyWithSemicolonAndWithoutAngleBracket) {
  EXPECT_EQ(fix_text("cats &amp; dogs"), "cats & dogs");
  EXPECT_EQ(fix_text("&lt;3 &eacute;t&eacute;"), "<3 été");
  EXPECT_EQ(fix_text("&amp;amp;"), "&");
  EXPECT_EQ(fix_text("P&EACUTE;REZ &NTILDE; &nTILDE;"), "PÉREZ Ñ &nTILDE;");
  EXPECT_EQ(fix_text("it&#x2019;s &#8212; &#128; &#65;&#X42;"), "it's — € AB");
  EXPECT_EQ(fix_text("Broken text&hellip; it&#x2019;s ﬂubberiﬁc!"), "Broken text… it's flubberific!");
  // No semicolon, unknown names, numbers html.unescape would only partly decode: left as they are.
  EXPECT_EQ(fix_text("this&not that, a &amp b, &bogus; &#12ab; &#x;"), "this&not that, a &amp b, &bogus; &#12ab; &#x;");
  // A literal '<' means the text may be HTML, so its entities stay, here and on later lines.
  EXPECT_EQ(fix_text("<b>cats &amp; dogs</b>"), "<b>cats &amp; dogs</b>");
  EXPECT_EQ(fix_text("a &amp; b\n<c>\nd &amp; e"), "a & b\n<c>\nd &amp; e");
}

TEST(FixText, Mojibake) {
  EXPECT_EQ(fix_text("cafÃ©"), "café");
  EXPECT_EQ(fix_text("schÃ¶n"), "schön");
  EXPECT_EQ(fix_text("Ãºnico"), "único");
  EXPECT_EQ(fix_text("â€œquotedâ€\u009d"), "\"quoted\"");  // curly quotes, then uncurled
  EXPECT_EQ(fix_text("mojibake: schÃ¶n cafÃ© â€œquotedâ€\u009d"), "mojibake: schön café \"quoted\"");
  EXPECT_EQ(fix_text("This â€” should be an em dash"), "This — should be an em dash");
  EXPECT_EQ(fix_text("âœ” No problems"), "✔ No problems");
  EXPECT_EQ(fix_text("uÌˆnicode"), "ünicode");
  // Two layers of mojibake.
  EXPECT_EQ(fix_text("\u00e0\u00b2\u00a0_\u00e0\u00b2\u00a0"), "ಠ_ಠ");
  EXPECT_EQ(fix_text("\u00c3\u00a0\u00c2\u00b2\u00c2\u00a0_\u00c3\u00a0\u00c2\u00b2\u00c2\u00a0"), "ಠ_ಠ");
  // A0 bytes that became spaces: "Ã " is "à" followed by a space.
  EXPECT_EQ(fix_text("voilÃ le travail"), "voilà le travail");
  EXPECT_EQ(fix_text("The more you know ðŸŒ "), "The more you know 🌠");
  // Mojibake next to correctly decoded text is fixed where it is.
  EXPECT_EQ(fix_text("&macr;\\_(ã\u0083\u0084)_/&macr;"), "¯\\_(ツ)_/¯");
  // Latin-1 that was meant as Windows-1252.
  EXPECT_EQ(fix_text("This text was never UTF-8 at all\u0085"), "This text was never UTF-8 at all…");
  // Sloppy Windows-1252 that lost a byte: the lost character becomes U+FFFD.
  EXPECT_EQ(fix_text("â€œ like this â€\uFFFD"), "\" like this \uFFFD");
}

TEST(FixText, LeavesPlausibleAccentsAlone) {
  EXPECT_EQ(fix_text("not such a fan of Charlotte Brontë…”"), "not such a fan of Charlotte Brontë…\"");
  EXPECT_EQ(fix_text("MARQUÉ…"), "MARQUÉ…");
  EXPECT_EQ(fix_text("5×£35"), "5×£35");
}

TEST(FixText, LineBreaksControlsAndEscapes) {
  EXPECT_EQ(fix_text("a\r\nb\rc\u2028d\u2029e"), "a\nb\nc\nd\ne");
  EXPECT_EQ(fix_text(std::string("a\x00"
                                 "b\x07"
                                 "c\ufeffd\ufffce",
                                 14)),
            "abcde");
  EXPECT_EQ(fix_text("keep\ttabs\fand\u200dzwj"), "keep\ttabs\fand\u200dzwj");
  EXPECT_EQ(fix_text("\x1b[36;44mI'm blue\x1b[0m"), "I'm blue");
}

TEST(FixText, NormalizesToNfc) {
  EXPECT_EQ(fix_text("e\u0301te\u0301"), "été");
  EXPECT_EQ(fix_text("\u212b"), "\u00c5");  // ANGSTROM SIGN is a singleton decomposition
}

TEST(FixText, InvalidUtf8BecomesReplacementCharacters) {
  EXPECT_EQ(fix_text("a\xff"
                     "b"),
            "a\uFFFDb");
  EXPECT_EQ(fix_text("a\xe2\x82"
                     "b"),
            "a\uFFFDb");                                      // one U+FFFD for a truncated sequence
  EXPECT_EQ(fix_text("\xed\xa0\x80"), "\uFFFD\uFFFD\uFFFD");  // an encoded surrogate: one per byte
}

TEST(Ftfy, BadnessHeuristic) {
  EXPECT_TRUE(ftfy::is_bad(U"cafÃ©"));
  EXPECT_TRUE(ftfy::is_bad(U"â€œ"));
  EXPECT_TRUE(ftfy::is_bad(U"a\u0085b"));  // any C1 control
  EXPECT_FALSE(ftfy::is_bad(U"café naïve"));
  EXPECT_FALSE(ftfy::is_bad(U"Ã"));
  EXPECT_FALSE(ftfy::is_bad(U"plain ASCII"));
}

TEST(Ftfy, FixEncodingOnly) {
  EXPECT_EQ(ftfy::fix_encoding(U"sÃ³"), U"só");
  EXPECT_EQ(ftfy::fix_encoding(U"&ATILDE;&SUP3;"), U"&ATILDE;&SUP3;");
  EXPECT_EQ(ftfy::fix_encoding(U"â€œcurlyâ€\u009d"), U"“curly”");
}

TEST(Unicode, PythonLower) {
  EXPECT_EQ(to_lower(U"ÀÉÎ ΣΟΦΟΣ İ"), U"àéî σοφος i\u0307");
  EXPECT_EQ(to_lower(U"Σ"), U"σ");  // no cased letter before it: not final
  EXPECT_EQ(to_lower(U"ΑΣ."), U"ας.");
}

}  // namespace
}  // namespace sdstack::text
