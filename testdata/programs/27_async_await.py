import asyncio
async def work(name, delay):
    await asyncio.sleep(delay)
    return f"{name} done"
async def main():
    results = await asyncio.gather(work("a", 0.02), work("b", 0.01), work("c", 0))
    print(results)
    q = asyncio.Queue()
    for i in range(3):
        await q.put(i)
    items = []
    while not q.empty():
        items.append(await q.get())
    print(items)
    async def agen():
        for i in range(3):
            yield i * i
    print([x async for x in agen()])
asyncio.run(main())
