// The built-in tokenizer: byte-pair merges learnt from a word list, in CLIP's vocab.json/merges.txt format.
#include "models/builtin_tokenizer.h"

#include <map>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/file.h"

namespace sdstack::models {
namespace {

// Common English words and the words prompts are made of. Every one becomes a single token; any
// other word is spelled with the pieces these share (or single bytes).
constexpr const char* kWords =
    "a an the of in on at to for from by with without and or not no yes is are was were be been has have had "
    "it its this that these those there here he she they we you i me my your his her our their who what "
    "one two three four five many some all every each more most very much little big small large tiny huge "
    "tall short long wide round old new young good bad best better beautiful pretty cute ugly happy sad "
    "angry calm quiet loud hot cold warm soft hard dark light bright deep high low fast slow "
    "cat cats kitten dog dogs puppy hat hats cap bird birds fish horse horses cow sheep pig bear fox wolf "
    "lion tiger rabbit mouse owl eagle dragon snake frog duck animal animals "
    "man men woman women girl boy child children person people king queen prince princess knight wizard "
    "witch warrior soldier robot robots astronaut alien monster ghost angel "
    "face eyes eye hair hand hands head body smile portrait figure "
    "red orange yellow green blue purple pink brown black white gray grey gold golden silver color colors "
    "colorful vibrant pastel neon "
    "sky sun moon star stars planet space galaxy cloud clouds rain snow fog storm wind fire water ice "
    "sea ocean river lake beach island mountain mountains hill valley forest tree trees flower flowers "
    "grass garden field desert jungle cave "
    "city town street road bridge building buildings house home castle tower church temple room kitchen "
    "window door wall floor table chair bed book books lamp clock "
    "car cars train ship boat plane bike "
    "food apple apples bread cake coffee tea cup wine "
    "dress shirt coat armor sword shield crown glasses "
    "wood wooden stone glass metal steel paper crystal marble "
    "morning day evening night sunset sunrise hour summer winter spring autumn "
    "photo photograph photography picture image painting drawing sketch illustration render art artwork "
    "oil watercolor digital pencil ink canvas poster cover concept style styles "
    "realistic photorealistic hyperrealistic detailed intricate sharp focus blurry blur bokeh "
    "cinematic dramatic lighting light lights shadow shadows volumetric glowing shiny "
    "studio camera lens view close closeup wide angle shot background foreground scene "
    "quality resolution masterpiece trending artstation unreal engine octane award winning professional "
    "epic fantasy magic magical mystical surreal dreamy abstract minimalist vintage retro modern "
    "futuristic cyberpunk steampunk anime cartoon comic pixel film grain "
    "sitting standing walking running flying riding holding wearing looking playing eating reading "
    "made under over above below behind near inside outside between around through into top side front "
    "back left right up down";

// GPT-2's bytes_to_unicode, the code points CLIP's vocabulary spells bytes with, in CLIP's vocab
// order: the printable bytes as themselves first, then the others as 256, 257, ...
std::vector<std::pair<int, char32_t>> byte_characters_in_vocab_order() {
  std::vector<std::pair<int, char32_t>> order;
  std::set<int> printable;
  for (int b = '!'; b <= '~'; ++b) printable.insert(b);
  for (int b = 0xA1; b <= 0xAC; ++b) printable.insert(b);
  for (int b = 0xAE; b <= 0xFF; ++b) printable.insert(b);
  for (int b : printable) order.emplace_back(b, static_cast<char32_t>(b));
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    if (printable.count(b) == 0) order.emplace_back(b, next++);
  }
  return order;
}

std::string utf8(char32_t c) {
  std::string out;
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {  // every character bytes_to_unicode uses is below 0x10000
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
  return out;
}

// Byte-pair encoding training: start from letters (the last one marked "</w>"), merge the most
// frequent adjacent pair everywhere (ties broken by the pair's spelling, so the result never
// varies), until every word is one symbol. Words are lowercase ASCII letters, which
// bytes_to_unicode spells as themselves.
std::vector<std::pair<std::string, std::string>> learn_merges() {
  std::set<std::string> distinct;
  std::istringstream stream(kWords);
  for (std::string word; stream >> word;) distinct.insert(word);
  std::vector<std::vector<std::string>> words;
  for (const std::string& word : distinct) {
    std::vector<std::string> symbols;
    for (char c : word) symbols.emplace_back(1, c);
    symbols.back() += "</w>";
    words.push_back(std::move(symbols));
  }

  std::vector<std::pair<std::string, std::string>> merges;
  for (;;) {
    std::map<std::pair<std::string, std::string>, int> counts;
    for (const auto& symbols : words) {
      for (size_t i = 0; i + 1 < symbols.size(); ++i) ++counts[{symbols[i], symbols[i + 1]}];
    }
    if (counts.empty()) break;
    auto best = counts.begin();
    for (auto it = counts.begin(); it != counts.end(); ++it) {
      if (it->second > best->second) best = it;
    }
    const std::pair<std::string, std::string> merge = best->first;
    merges.push_back(merge);
    // Merge left to right, as CLIPTokenizer.bpe applies a merge.
    for (auto& symbols : words) {
      std::vector<std::string> merged;
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == merge.first && symbols[i + 1] == merge.second) {
          merged.push_back(merge.first + merge.second);
          ++i;
        } else {
          merged.push_back(symbols[i]);
        }
      }
      symbols.swap(merged);
    }
  }
  return merges;
}

// transformers' AddedToken as tokenizer_config.json and special_tokens_map.json write it.
nlohmann::ordered_json added_token(const std::string& content, bool with_type) {
  nlohmann::ordered_json token;
  if (with_type) token["__type"] = "AddedToken";
  token["content"] = content;
  token["lstrip"] = false;
  token["normalized"] = true;
  token["rstrip"] = false;
  token["single_word"] = false;
  return token;
}

}  // namespace

namespace {

TokenizerFiles build_tokenizer() {
  const std::string start = "<|startoftext|>", end = "<|endoftext|>";
  TokenizerFiles files;

  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  int32_t next_id = 0;
  const auto bytes = byte_characters_in_vocab_order();
  for (const auto& [byte, character] : bytes) vocab[utf8(character)] = next_id++;
  for (const auto& [byte, character] : bytes) vocab[utf8(character) + "</w>"] = next_id++;
  std::string merges_txt = "#version: 0.2\n";
  const auto merges = learn_merges();
  for (const auto& [left, right] : merges) {
    merges_txt += left + " " + right + "\n";
    if (!vocab.contains(left + right)) vocab[left + right] = next_id++;  // two merges can spell one token
  }
  vocab[start] = kStartOfTextId;
  vocab[end] = kEndOfTextId;
  files.vocab_json = vocab.dump();
  files.merges_txt = std::move(merges_txt);
  files.merges = merges.size();

  nlohmann::ordered_json config;
  config["add_prefix_space"] = false;
  config["bos_token"] = added_token(start, true);
  config["clean_up_tokenization_spaces"] = true;
  config["do_lower_case"] = true;
  config["eos_token"] = added_token(end, true);
  config["errors"] = "replace";
  config["model_max_length"] = 77;
  config["pad_token"] = end;
  config["tokenizer_class"] = "CLIPTokenizer";
  config["unk_token"] = added_token(end, true);
  files.tokenizer_config_json = config.dump(2) + "\n";

  nlohmann::ordered_json special;
  special["bos_token"] = added_token(start, false);
  special["eos_token"] = added_token(end, false);
  special["pad_token"] = end;
  special["unk_token"] = added_token(end, false);
  files.special_tokens_map_json = special.dump(2) + "\n";
  return files;
}

}  // namespace

TokenizerFiles make_builtin_tokenizer() {
  // Learning the merges takes ~0.1 s and the result never changes: made once per process.
  static const TokenizerFiles files = build_tokenizer();
  return files;
}

base::Status write_builtin_tokenizer(const std::string& dir) {
  const TokenizerFiles files = make_builtin_tokenizer();
  SD_RETURN_IF_ERROR(base::write_file_atomic(base::join_path(dir, "vocab.json"), files.vocab_json));
  SD_RETURN_IF_ERROR(base::write_file_atomic(base::join_path(dir, "merges.txt"), files.merges_txt));
  SD_RETURN_IF_ERROR(
      base::write_file_atomic(base::join_path(dir, "tokenizer_config.json"), files.tokenizer_config_json));
  return base::write_file_atomic(base::join_path(dir, "special_tokens_map.json"), files.special_tokens_map_json);
}

}  // namespace sdstack::models
