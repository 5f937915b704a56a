package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

type vectors struct {
	Records []struct {
		ID   string `json:"id"`
		Body string `json:"body"`
	} `json:"records"`
	Merkle []struct {
		IDs  []string `json:"ids"`
		Root string   `json:"root"`
	} `json:"merkle"`
	Block struct {
		Height int64  `json:"height"`
		ID     string `json:"id"`
		Header string `json:"header"`
	} `json:"block"`
}

func loadVectors(t *testing.T) vectors {
	raw, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Records) == 0 || len(v.Merkle) < 2 {
		t.Fatal("vectors file holds no vectors")
	}
	return v
}

func TestRecordIDsMatchPython(t *testing.T) {
	for i, r := range loadVectors(t).Records {
		if got := digestHex([]byte(r.Body)); got != r.ID {
			t.Errorf("record %d: Go id %s, Python id %s", i, got, r.ID)
		}
	}
}

func TestMerkleRootsMatchPython(t *testing.T) {
	for _, m := range loadVectors(t).Merkle {
		got, err := merkleRoot(m.IDs)
		if err != nil {
			t.Fatal(err)
		}
		if got != m.Root {
			t.Errorf("%d leaves: Go root %s, Python root %s", len(m.IDs), got, m.Root)
		}
	}
}

func wireOf(v vectors) wireBlock {
	block := wireBlock{Height: v.Block.Height, ID: v.Block.ID, Header: v.Block.Header}
	for _, r := range v.Records {
		block.Records = append(block.Records, wireRecord{ID: r.ID, Body: r.Body})
	}
	return block
}

func TestPythonBlockPassesChecksAndRoundTrips(t *testing.T) {
	v := loadVectors(t)
	block := wireOf(v)
	if err := checkBlock(block, ""); err != nil {
		t.Fatalf("a block the Python core built is refused: %v", err)
	}
	var sb strings.Builder
	sb.WriteString(wireMagic + "\n")
	encodeBlock(&sb, block)
	decoded, err := decodeBlocks(sb.String())
	if err != nil || len(decoded) != 1 || decoded[0].Header != block.Header || len(decoded[0].Records) != len(block.Records) {
		t.Fatalf("wire round trip failed: %v", err)
	}
	for i := range block.Records {
		if decoded[0].Records[i] != block.Records[i] {
			t.Fatalf("record %d changed on the wire", i)
		}
	}
}

func TestTamperedBlocksAreRefused(t *testing.T) {
	v := loadVectors(t)
	cases := map[string]func(b *wireBlock) string{
		"record body": func(b *wireBlock) string {
			b.Records[2].Body = strings.Replace(b.Records[2].Body, `"engine":"vector"`, `"engine":"vectoR"`, 1)
			return "INVALID"
		},
		"record order": func(b *wireBlock) string {
			b.Records[0], b.Records[1] = b.Records[1], b.Records[0]
			return "Merkle root"
		},
		"dropped record": func(b *wireBlock) string { b.Records = b.Records[1:]; return "counts" },
		"wrong link":     func(b *wireBlock) string { return "" },
		"header edit": func(b *wireBlock) string {
			b.Header = strings.Replace(b.Header, `"height":0`, `"height":1`, 1)
			return "does not hash"
		},
	}
	for name, mutate := range cases {
		block := wireOf(v)
		want := mutate(&block)
		prev := ""
		if name == "wrong link" {
			prev, want = strings.Repeat("ab", 32), "CONFLICT"
		}
		err := checkBlock(block, prev)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want an error containing %q, got %v", name, want, err)
		}
	}
}

func TestTruncatedPayloadIsRefused(t *testing.T) {
	v := loadVectors(t)
	var sb strings.Builder
	sb.WriteString(wireMagic + "\n")
	encodeBlock(&sb, wireOf(v))
	lines := strings.Split(sb.String(), "\n")
	if _, err := decodeBlocks(strings.Join(lines[:len(lines)-3], "\n")); err == nil {
		t.Fatal("a payload missing records decoded without error")
	}
}
