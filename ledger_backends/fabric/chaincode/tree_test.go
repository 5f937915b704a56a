package main

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
)

type treeVectors struct {
	LogTree struct {
		IDs   []string `json:"ids"`
		Roots []string `json:"roots"`
	} `json:"log_tree"`
}

func loadTreeVectors(t *testing.T) treeVectors {
	raw, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v treeVectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.LogTree.IDs) < 8 || len(v.LogTree.Roots) != len(v.LogTree.IDs)+1 {
		t.Fatal("vectors file holds no log tree vectors")
	}
	return v
}

func rootHex(tree *logTree) string {
	root := tree.root()
	return hex.EncodeToString(root[:])
}

// Leaf by leaf: the root of every size is the shared vectors' RFC 9162 root.
func TestLogTreeRootsMatchTheSharedVectors(t *testing.T) {
	v := loadTreeVectors(t).LogTree
	tree := &logTree{}
	if got := rootHex(tree); got != v.Roots[0] {
		t.Fatalf("empty tree: Go root %s, vectors %s", got, v.Roots[0])
	}
	for n, id := range v.IDs {
		if err := tree.appendIDs([]string{id}); err != nil {
			t.Fatal(err)
		}
		if got := rootHex(tree); got != v.Roots[n+1] {
			t.Errorf("%d leaves: Go root %s, vectors %s", n+1, got, v.Roots[n+1])
		}
		if len(tree.Peaks) != countBits(tree.Size) {
			t.Errorf("%d leaves: %d subtrees kept", n+1, len(tree.Peaks))
		}
	}
	// Promoting an odd node bottom-up (merkle.go, a block's root) builds the same RFC 9162
	// shape, so a block's root over the same ids is the same hash.
	for n := range v.Roots {
		if got, err := merkleRoot(v.IDs[:n]); err != nil || got != v.Roots[n] {
			t.Errorf("%d leaves: block root %s, log tree root %s (%v)", n, got, v.Roots[n], err)
		}
	}
}

// Blocks of any sizes, through the stored encoding between them, give the same tree.
func TestLogTreeSurvivesItsStateEncodingBetweenBlocks(t *testing.T) {
	v := loadTreeVectors(t).LogTree
	for _, sizes := range [][]int{{11}, {1, 2, 3, 5}, {4, 4, 3}, {0, 7, 0, 4}} {
		tree, start := &logTree{}, 0
		for _, size := range sizes {
			if err := tree.appendIDs(v.IDs[start : start+size]); err != nil {
				t.Fatal(err)
			}
			tree.Blocks++
			start += size
			decoded, err := decodeTree([]byte(tree.encode()))
			if err != nil {
				t.Fatal(err)
			}
			if decoded.encode() != tree.encode() || rootHex(decoded) != v.Roots[start] {
				t.Fatalf("blocks %v: after %d leaves the stored tree reads back as another", sizes, start)
			}
			tree = decoded
		}
		if tree.Blocks != int64(len(sizes)) || tree.Size != int64(len(v.IDs)) {
			t.Errorf("blocks %v: tree counts %d blocks, %d leaves", sizes, tree.Blocks, tree.Size)
		}
	}
}

func TestCorruptTreeEntriesAreRefused(t *testing.T) {
	v := loadTreeVectors(t).LogTree
	tree := &logTree{}
	_ = tree.appendIDs(v.IDs[:3])
	good := tree.encode()
	for _, bad := range []string{
		"", "1\t3", "x\t3\t" + good[4:], "1\t4\t" + good[4:], // 3 = 0b11 keeps two subtrees, 4 = 0b100 one
		"1\t3\t" + v.IDs[0], "1\t-1\t", "1\t3\tzz,yy",
	} {
		if _, err := decodeTree([]byte(bad)); err == nil {
			t.Errorf("corrupt entry %.40q was accepted", bad)
		}
	}
	if err := tree.appendIDs([]string{"abc"}); err == nil {
		t.Error("a record id that is not 64 hex digits was accepted")
	}
}

func TestHeadMarksRoundTrip(t *testing.T) {
	for _, head := range []chainHead{
		{Height: 3, ID: "ab", Records: 9},
		{Height: 3, ID: "ab", Records: 9, Filter: true},
		{Height: 3, ID: "ab", Records: 9, Tree: true},
		{Height: 3, ID: "ab", Records: 9, Filter: true, Tree: true},
	} {
		fields, err := parseHead([]byte(head.encode()))
		if err != nil || *fields != head {
			t.Errorf("head %+v read back as %+v (%v)", head, fields, err)
		}
	}
	for _, bad := range []string{"3\tab", "3\tab\t9\tt1\tf1", "3\tab\t9\tf1\tf1", "3\tab\t9\tx1"} {
		if _, err := parseHead([]byte(bad)); err == nil {
			t.Errorf("corrupt head %q was accepted", bad)
		}
	}
}
