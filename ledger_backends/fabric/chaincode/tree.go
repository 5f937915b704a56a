package main

// The ledger's log tree (docs/verification.md section 2): one RFC 9162 tree over every record
// id in ledger order, leaf = BLAKE3(0x00 || id), node = BLAKE3(0x01 || left || right), split at
// the largest power of two below the size. A block's Merkle root (merkle.go) has the same
// shape over that block's records; this tree spans every block, and its head is what a user
// trusts, signs and compares.
//
// The chaincode keeps its *compact range*: one subtree root per set bit of the size, largest
// first. That is all it needs to append a leaf and to compute the root, so the state is
// O(log n) hashes whatever the ledger's size:
//
//	L/<ledger>/tree      blocks <TAB> size <TAB> hex root of each subtree, comma-separated
//
// Every Append of a ledger whose head carries the mark "t1" extends it in the same
// transaction as the records, so the tree head is endorsed world state: a query for it is
// answered, and signed, by each endorsing peer from its own copy of the state. Ledgers begun
// by an older chaincode have no tree and no mark; BuildTree builds theirs in bounded steps.

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/hyperledger/fabric-contract-api-go/v2/contractapi"
	"github.com/zeebo/blake3"
)

const (
	treeMark       = "t1"
	buildStepBytes = 16 << 20 // BuildTree reads at most about this much per transaction
)

// logTree is the compact range of the tree over the first size records (blocks blocks).
type logTree struct {
	Blocks int64
	Size   int64
	Peaks  [][32]byte // one per set bit of Size, largest subtree first
}

// appendLeaf adds one leaf: push it, then merge the two rightmost subtrees while they are
// the same size (the bits of Size say which merges a carry makes).
func (t *logTree) appendLeaf(leaf [32]byte) {
	t.Peaks = append(t.Peaks, leaf)
	for size := t.Size; size&1 == 1; size >>= 1 {
		n := len(t.Peaks)
		t.Peaks = append(t.Peaks[:n-2], nodeHash(t.Peaks[n-2], t.Peaks[n-1]))
	}
	t.Size++
}

// appendIDs adds one leaf per record id (lowercase hex).
func (t *logTree) appendIDs(ids []string) error {
	for _, id := range ids {
		raw, err := hex.DecodeString(id)
		if err != nil || len(raw) != 32 {
			return fmt.Errorf("record id %.16q is not 64 hex digits", id)
		}
		t.appendLeaf(leafHash(raw))
	}
	return nil
}

// root folds the subtrees from the right, the RFC 9162 shape; H("") for no leaves.
func (t *logTree) root() [32]byte {
	if len(t.Peaks) == 0 {
		return blake3.Sum256(nil)
	}
	digest := t.Peaks[len(t.Peaks)-1]
	for i := len(t.Peaks) - 2; i >= 0; i-- {
		digest = nodeHash(t.Peaks[i], digest)
	}
	return digest
}

func (t *logTree) encode() string {
	peaks := make([]string, len(t.Peaks))
	for i, peak := range t.Peaks {
		peaks[i] = hex.EncodeToString(peak[:])
	}
	return fmt.Sprintf("%d\t%d\t%s", t.Blocks, t.Size, strings.Join(peaks, ","))
}

func decodeTree(raw []byte) (*logTree, error) {
	fields := strings.Split(string(raw), "\t")
	if len(fields) != 3 {
		return nil, fmt.Errorf("corrupt tree entry %.80q", raw)
	}
	blocks, err1 := strconv.ParseInt(fields[0], 10, 64)
	size, err2 := strconv.ParseInt(fields[1], 10, 64)
	if err1 != nil || err2 != nil || blocks < 0 || size < 0 {
		return nil, fmt.Errorf("corrupt tree entry %.80q", raw)
	}
	t := &logTree{Blocks: blocks, Size: size}
	if fields[2] != "" {
		for _, text := range strings.Split(fields[2], ",") {
			var peak [32]byte
			if n, err := hex.Decode(peak[:], []byte(text)); err != nil || n != 32 || len(text) != 64 {
				return nil, fmt.Errorf("corrupt tree entry %.80q", raw)
			}
			t.Peaks = append(t.Peaks, peak)
		}
	}
	if countBits(size) != len(t.Peaks) {
		return nil, fmt.Errorf("tree entry holds %d subtrees for %d records", len(t.Peaks), size)
	}
	return t, nil
}

func countBits(n int64) int {
	count := 0
	for ; n > 0; n >>= 1 {
		count += int(n & 1)
	}
	return count
}

func readTree(ctx contractapi.TransactionContextInterface, p string) (*logTree, error) {
	raw, err := ctx.GetStub().GetState(p + "tree")
	if err != nil || raw == nil {
		return nil, err
	}
	return decodeTree(raw)
}

// TreeHead answers "size <TAB> root hex <TAB> blocks <TAB> last block id": the log tree over
// every record of the ledger (an empty ledger: size 0, root H(""), 0 blocks, no id). The
// client asks for it through an endorsement, so each endorsing peer signs its answer.
func (c *LedgerContract) TreeHead(ctx contractapi.TransactionContextInterface, ledger string) (string, error) {
	p, err := readablePrefix(ctx, ledger)
	if err != nil {
		return "", err
	}
	head, err := readHead(ctx, p)
	if err != nil {
		return "", err
	}
	if head == nil {
		empty := logTree{}
		root := empty.root()
		return fmt.Sprintf("0\t%x\t0\t", root[:]), nil
	}
	if !head.Tree {
		return "", fmt.Errorf("NO TREE: ledger %q was begun by a chaincode without the log tree; "+
			"build it once with BuildTree (FabricBackend.build_tree())", ledger)
	}
	tree, err := readTree(ctx, p)
	if err != nil {
		return "", err
	}
	if tree == nil || tree.Blocks != head.Height+1 || tree.Size != head.Records {
		return "", fmt.Errorf("the log tree does not cover the head (block %d, %d records)", head.Height, head.Records)
	}
	root := tree.root()
	return fmt.Sprintf("%d\t%x\t%d\t%s", tree.Size, root[:], tree.Blocks, head.ID), nil
}

// BuildTree builds the log tree of a ledger begun by an older chaincode, at most maxBlocks
// blocks (and about 16 MiB of them) per transaction, so each is small; the client calls it
// until it answers "done". When the tree reaches the head, the head gets the mark and every later Append
// keeps the tree current. It reads the head, so an Append committed meanwhile makes this
// transaction fail validation (MVCC) and the client calls again: the tree never skips a block.
// Answers "blocks <TAB> size <TAB> done|more".
func (c *LedgerContract) BuildTree(ctx contractapi.TransactionContextInterface, ledger string, maxBlocks int) (string, error) {
	p, err := readablePrefix(ctx, ledger) // derived state only: any role that reads may build it
	if err != nil {
		return "", err
	}
	if maxBlocks < 1 {
		return "", invalid("maxBlocks must be at least 1")
	}
	head, err := readHead(ctx, p)
	if err != nil {
		return "", err
	}
	if head == nil || head.Tree {
		return "0\t0\tdone", nil // nothing to build: a new ledger starts its tree with its first block
	}
	tree, err := readTree(ctx, p)
	if err != nil {
		return "", err
	}
	if tree == nil {
		tree = &logTree{}
	}
	stop := tree.Blocks + int64(maxBlocks)
	if stop > head.Height+1 {
		stop = head.Height + 1
	}
	// One GetState per block, not a range scan: a scan's pages hold up to 100 values, and
	// 100 blocks of 1,000 records would not fit in one message between peer and chaincode.
	// A step also ends after buildStepBytes of blocks, so that every transaction stays small.
	stub := ctx.GetStub()
	read := 0
	for tree.Blocks < stop && (read < buildStepBytes || read == 0) {
		height := tree.Blocks
		value, err := stub.GetState(p + "b/" + fmt.Sprintf("%012d", height))
		if err != nil {
			return "", err
		}
		if value == nil {
			return "", fmt.Errorf("block %d is missing from the ledger's state", height)
		}
		block, err := parseStoredBlock(height, value)
		if err != nil {
			return "", err
		}
		ids := make([]string, len(block.Records))
		for i, record := range block.Records {
			ids[i] = record.ID
		}
		if err := tree.appendIDs(ids); err != nil {
			return "", err
		}
		tree.Blocks++
		read += len(value)
	}
	if err := stub.PutState(p+"tree", []byte(tree.encode())); err != nil {
		return "", err
	}
	if tree.Blocks < head.Height+1 {
		return fmt.Sprintf("%d\t%d\tmore", tree.Blocks, tree.Size), nil
	}
	if tree.Size != head.Records {
		return "", fmt.Errorf("the tree counts %d records, the head %d", tree.Size, head.Records)
	}
	head.Tree = true
	if err := stub.PutState(p+"head", []byte(head.encode())); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d\t%d\tdone", tree.Blocks, tree.Size), nil
}
