"""A dozen small LeetCode-style problems for the fastest tests and the smoke preset.

Each: id, question, method_name, starter_code, canonical_solution (full `class Solution`), and tests
as (argument source, expected value). Expected values are Python literals kept in the trainer.

Owns: the data only. Must never import: anything (a leaf of plain data).
"""

from __future__ import annotations


def _starter(sig: str) -> str:
    return f"class Solution:\n    def {sig}:\n        "


BUILTIN_PROBLEMS: list[dict] = [
    dict(id="add_two", question="Return the sum of two integers a and b.",
         method_name="add", starter_code=_starter("add(self, a: int, b: int) -> int"),
         canonical_solution="class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b\n",
         tests=[("1, 2", 3), ("-5, 5", 0), ("a=100, b=23", 123), ("7, -10", -3)]),
    dict(id="reverse_string", question="Return the string s reversed.",
         method_name="reverse", starter_code=_starter("reverse(self, s: str) -> str"),
         canonical_solution="class Solution:\n    def reverse(self, s: str) -> str:\n        return s[::-1]\n",
         tests=[("'abc'", "cba"), ("''", ""), ("'racecar'", "racecar"), ("s='ab c'", "c ba")]),
    dict(id="max_of_list", question="Return the largest number in the non-empty list nums.",
         method_name="maxOf", starter_code=_starter("maxOf(self, nums: list[int]) -> int"),
         canonical_solution="class Solution:\n    def maxOf(self, nums: list[int]) -> int:\n        return max(nums)\n",
         tests=[("[1, 5, 3]", 5), ("[-4, -2, -9]", -2), ("[7]", 7), ("nums=[0, 0, 1]", 1)]),
    dict(id="count_vowels", question="Return how many characters of s are vowels (a, e, i, o, u; lowercase only).",
         method_name="countVowels", starter_code=_starter("countVowels(self, s: str) -> int"),
         canonical_solution="class Solution:\n    def countVowels(self, s: str) -> int:\n        return sum(c in 'aeiou' for c in s)\n",
         tests=[("'hello'", 2), ("'xyz'", 0), ("'aeiou'", 5), ("'Apple'", 1)]),
    dict(id="is_palindrome", question="Return True if the string s reads the same forwards and backwards, else False.",
         method_name="isPalindrome", starter_code=_starter("isPalindrome(self, s: str) -> bool"),
         canonical_solution="class Solution:\n    def isPalindrome(self, s: str) -> bool:\n        return s == s[::-1]\n",
         tests=[("'abba'", True), ("'abc'", False), ("''", True), ("'a'", True), ("'ab'", False)]),
    dict(id="fizzbuzz_word", question="Return 'FizzBuzz' if n is divisible by 15, 'Fizz' if by 3, 'Buzz' if by 5, else str(n).",
         method_name="fizzBuzz", starter_code=_starter("fizzBuzz(self, n: int) -> str"),
         canonical_solution=("class Solution:\n    def fizzBuzz(self, n: int) -> str:\n"
                             "        if n % 15 == 0:\n            return 'FizzBuzz'\n"
                             "        if n % 3 == 0:\n            return 'Fizz'\n"
                             "        if n % 5 == 0:\n            return 'Buzz'\n        return str(n)\n"),
         tests=[("15", "FizzBuzz"), ("9", "Fizz"), ("10", "Buzz"), ("7", "7"), ("30", "FizzBuzz")]),
    dict(id="two_sum", question="Return the indices [i, j] (i < j) of the two numbers in nums that add up to target.",
         method_name="twoSum", starter_code=_starter("twoSum(self, nums: list[int], target: int) -> list[int]"),
         canonical_solution=("class Solution:\n    def twoSum(self, nums: list[int], target: int) -> list[int]:\n"
                             "        seen = {}\n        for j, x in enumerate(nums):\n"
                             "            if target - x in seen:\n                return [seen[target - x], j]\n"
                             "            seen[x] = j\n        return []\n"),
         tests=[("[2, 7, 11, 15], 9", [0, 1]), ("[3, 2, 4], 6", [1, 2]), ("nums=[3, 3], target=6", [0, 1]),
                ("[1, 5, 9, 2], 11", [2, 3])]),
    dict(id="factorial", question="Return n! for a non-negative integer n.",
         method_name="factorial", starter_code=_starter("factorial(self, n: int) -> int"),
         canonical_solution=("class Solution:\n    def factorial(self, n: int) -> int:\n"
                             "        r = 1\n        for i in range(2, n + 1):\n            r *= i\n        return r\n"),
         tests=[("0", 1), ("1", 1), ("5", 120), ("10", 3628800)]),
    dict(id="running_sum", question="Return the running sums of nums: out[i] = nums[0] + ... + nums[i].",
         method_name="runningSum", starter_code=_starter("runningSum(self, nums: list[int]) -> list[int]"),
         canonical_solution=("class Solution:\n    def runningSum(self, nums: list[int]) -> list[int]:\n"
                             "        out, t = [], 0\n        for x in nums:\n            t += x\n"
                             "            out.append(t)\n        return out\n"),
         tests=[("[1, 2, 3, 4]", [1, 3, 6, 10]), ("[]", []), ("[5]", [5]), ("[3, -3, 2]", [3, 0, 2])]),
    dict(id="count_words", question="Return a dict mapping each word of the space-separated string s to its count.",
         method_name="countWords", starter_code=_starter("countWords(self, s: str) -> dict"),
         canonical_solution=("class Solution:\n    def countWords(self, s: str) -> dict:\n"
                             "        d = {}\n        for w in s.split():\n            d[w] = d.get(w, 0) + 1\n        return d\n"),
         tests=[("'a b a'", {"a": 2, "b": 1}), ("''", {}), ("'x'", {"x": 1}), ("'to be or not to be'",
                                                                             {"to": 2, "be": 2, "or": 1, "not": 1})]),
    dict(id="min_max_pair", question="Return the tuple (smallest, largest) of the non-empty list nums.",
         method_name="minMax", starter_code=_starter("minMax(self, nums: list[int]) -> tuple"),
         canonical_solution="class Solution:\n    def minMax(self, nums: list[int]) -> tuple:\n        return (min(nums), max(nums))\n",
         tests=[("[3, 1, 2]", (1, 3)), ("[5]", (5, 5)), ("[-1, -7, 4]", (-7, 4))]),
    dict(id="average", question="Return the mean of the non-empty list nums as a float.",
         method_name="average", starter_code=_starter("average(self, nums: list[int]) -> float"),
         canonical_solution="class Solution:\n    def average(self, nums: list[int]) -> float:\n        return sum(nums) / len(nums)\n",
         tests=[("[1, 2, 3]", 2.0), ("[4]", 4.0), ("[1, 2]", 1.5), ("[0, 0, 0, 1]", 0.25)]),
    dict(id="unique_sorted", question="Return the distinct values of nums in increasing order.",
         method_name="uniqueSorted", starter_code=_starter("uniqueSorted(self, nums: list[int]) -> list[int]"),
         canonical_solution="class Solution:\n    def uniqueSorted(self, nums: list[int]) -> list[int]:\n        return sorted(set(nums))\n",
         tests=[("[3, 1, 3, 2]", [1, 2, 3]), ("[]", []), ("[5, 5, 5]", [5]), ("[-1, 2, -1]", [-1, 2])]),
]
