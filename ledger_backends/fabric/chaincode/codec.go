package main

// The wire format between the Python gateway client and this chaincode. Canonical JSON
// (what record and header bytes are) never holds a raw newline or tab, so lines and tabs
// frame it without escaping: a block of 1,000 records travels as one argument with no
// JSON-in-JSON quoting, in one Fabric transaction.
//
//	LLB1
//	B <TAB> height <TAB> block id <TAB> record count
//	<canonical header JSON>
//	record id <TAB> <canonical record JSON>        (record count lines)
//	B <TAB> ...
//
// Located records (query answers) are lines of: height <TAB> position <TAB> id <TAB> body.

import (
	"fmt"
	"strconv"
	"strings"
)

const wireMagic = "LLB1"

type wireRecord struct {
	ID   string
	Body string
}

type wireBlock struct {
	Height  int64
	ID      string
	Header  string
	Records []wireRecord
}

func decodeBlocks(payload string) ([]wireBlock, error) {
	lines := strings.Split(strings.TrimSuffix(payload, "\n"), "\n")
	if len(lines) == 0 || lines[0] != wireMagic {
		return nil, fmt.Errorf("payload does not start with %s", wireMagic)
	}
	var blocks []wireBlock
	i := 1
	for i < len(lines) {
		fields := strings.Split(lines[i], "\t")
		if len(fields) != 4 || fields[0] != "B" {
			return nil, fmt.Errorf("line %d: expected a block line, got %.60q", i+1, lines[i])
		}
		height, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil || height < 0 {
			return nil, fmt.Errorf("line %d: bad height %q", i+1, fields[1])
		}
		count, err := strconv.Atoi(fields[3])
		if err != nil || count < 0 {
			return nil, fmt.Errorf("line %d: bad record count %q", i+1, fields[3])
		}
		if i+1+count > len(lines)-1 { // the header line and count record lines must follow
			return nil, fmt.Errorf("block %d: payload ends before its header and %d records", height, count)
		}
		block := wireBlock{Height: height, ID: fields[2], Header: lines[i+1], Records: make([]wireRecord, count)}
		for r := 0; r < count; r++ {
			line := lines[i+2+r]
			tab := strings.IndexByte(line, '\t')
			if tab < 0 {
				return nil, fmt.Errorf("block %d record %d: no tab between id and body", height, r)
			}
			block.Records[r] = wireRecord{ID: line[:tab], Body: line[tab+1:]}
		}
		blocks = append(blocks, block)
		i += 2 + count
	}
	return blocks, nil
}

func encodeBlock(sb *strings.Builder, block wireBlock) {
	fmt.Fprintf(sb, "B\t%d\t%s\t%d\n%s\n", block.Height, block.ID, len(block.Records), block.Header)
	for _, record := range block.Records {
		sb.WriteString(record.ID)
		sb.WriteByte('\t')
		sb.WriteString(record.Body)
		sb.WriteByte('\n')
	}
}

// located is one record and where it sits: block height and position in the block.
type located struct {
	Height   int64
	Position int
	ID       string
	Body     string
}

func encodeLocated(items []located) string {
	var sb strings.Builder
	for _, item := range items {
		fmt.Fprintf(&sb, "%d\t%d\t%s\t%s\n", item.Height, item.Position, item.ID, item.Body)
	}
	return sb.String()
}
